"""How good is the refusal detector (``zoo.deal.metrics.is_refusal``)? Hand labels on a sample.

``sample``: answers of the DeAl family and of transplanted students to held-out requests (the
``test`` and ``test_templates`` splits of ``data_modules.instructions``), a seeded stratified sample
(``--per-model`` per model, half harmful requests), written with ``"label": null`` to
``benchmarks/deal/refusal_labels.json``. A person then reads every answer and sets ``label`` to
true (the answer refuses) or false, without looking at the detector's verdict (it is not stored).

``score``: the detector's precision, recall and agreement against the hand labels.

    python benchmarks/deal/refusal_labels.py sample [--sites 2:mlp,3:mlp]
    python benchmarks/deal/refusal_labels.py score
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from data_modules.instructions import build_examples
from zoo.core.lm import load_causal_lm
from zoo.deal import answer_requests, is_refusal, parse_sites, transplant

LABELS = Path(__file__).resolve().parent / "refusal_labels.json"


def sample(args) -> None:
    teacher, _ = load_causal_lm("deal-aligned")
    student, _ = load_causal_lm("deal-unaligned")
    models = {"deal-aligned": teacher, "deal-unaligned": student,
              f"transplant {args.sites}": transplant(student, teacher, parse_sites(args.sites)),
              "transplant all MLPs": transplant(student, teacher, [(i, "mlp") for i in range(len(student.model.layers))])}
    examples = build_examples()
    pool = examples["test"] + examples["test_templates"]
    rng = random.Random(args.seed)
    rows = []
    for name, model in models.items():
        harmful = rng.sample([e for e in pool if e.kind == "harmful"], args.per_model // 2)
        benign = rng.sample([e for e in pool if e.kind == "benign"], args.per_model - args.per_model // 2)
        chosen = harmful + benign
        answers = answer_requests(model, [e.request for e in chosen], args.max_new_tokens)
        rows += [{"model": name, "kind": e.kind, "request": e.request, "answer": a, "label": None}
                 for e, a in zip(chosen, answers)]
    rng.shuffle(rows)  # the labeller sees them mixed, not grouped by model
    LABELS.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} unlabelled answers to {LABELS}")


def score(args) -> None:
    rows = json.loads(LABELS.read_text())
    missing = [i for i, r in enumerate(rows) if r["label"] is None]
    if missing:
        raise SystemExit(f"{len(missing)} rows of {LABELS} have no label yet (first: {missing[0]})")
    predicted = [is_refusal(r["answer"]) for r in rows]
    truth = [bool(r["label"]) for r in rows]
    tp = sum(p and t for p, t in zip(predicted, truth))
    fp = sum(p and not t for p, t in zip(predicted, truth))
    fn = sum(t and not p for p, t in zip(predicted, truth))
    result = {"labelled": len(rows), "refusals (hand)": sum(truth), "refusals (detector)": sum(predicted),
              "precision": tp / (tp + fp) if tp + fp else float("nan"),
              "recall": tp / (tp + fn) if tp + fn else float("nan"),
              "agreement": sum(p == t for p, t in zip(predicted, truth)) / len(rows),
              "disagreements": [r for r, p, t in zip(rows, predicted, truth) if p != t]}
    print(json.dumps(result, indent=1, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    draw = commands.add_parser("sample")
    draw.add_argument("--sites", default="2:mlp,3:mlp", help="the transplant to sample besides all MLPs")
    draw.add_argument("--per-model", type=int, default=20)
    draw.add_argument("--max-new-tokens", type=int, default=24)
    draw.add_argument("--seed", type=int, default=0)
    commands.add_parser("score")
    args = parser.parse_args()
    {"sample": sample, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
