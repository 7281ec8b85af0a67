"""AlignAb stage 1: the shipped antibody LM against frequency baselines on held-out OAS sequences.

    python benchmarks/alignab/lm.py [--name alignab-lm-oas] [--data-dir ../shared/data/antibody] [--threads 1]

Reads the test split of ``AntibodySequenceDataModule`` with the arguments the checkpoint's config
used (80/10/10, seed 0, BERT masks fixed by the seed) and reports

1. masked-token accuracy and perplexity over all targets and over CDR-H3 targets (IMGT, from
   ``data_modules.numbering``) for the LM and two baselines fit on the training split: unigram
   residue frequencies, and residue frequencies at the same token index (add-one smoothing);
2. nativeness: the per-residue pseudo-log-likelihood of every test sequence against the same
   sequence with its residues shuffled (seeded), and the share of pairs the LM ranks correctly;
3. the wall time of one PLL of a whole sequence (all positions masked in turn, batched), median
   over the test sequences' batches;
4. the IMGT rule of ``data_modules.numbering`` against the file's ``cdr3_aa`` column (OAS's IMGT
   CDR3): sequences numbered, exact CDR-H3 matches, and how many annotated CDR3s sit literally
   between a Cys and a Trp (OAS excludes both anchors).

Prints a markdown table and one JSON line. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import statistics
import time

import torch

import zoo
from data_modules.antibody import AntibodySequenceDataModule
from data_modules.numbering import cdr_spans
from zoo.alignab.lm_module import MaskedLMScores
from zoo.core.errors import MalformedDataError


def evaluate(model, data: AntibodySequenceDataModule) -> dict[str, dict[str, float]]:
    scores = {f"{s}_{r}": MaskedLMScores() for s in ("lm", "unigram", "position") for r in ("all", "h3")}
    test_set = data.test_set
    with torch.no_grad():
        for start in range(0, len(test_set), 64):
            batch = test_set.__getitems__(list(range(start, min(start + 64, len(test_set)))))
            log_probs, truth, h3 = model.target_log_probs(batch)
            for scorer, values in log_probs.items():
                scores[f"{scorer}_all"].update(values, truth)
                scores[f"{scorer}_h3"].update(values[h3], truth[h3])
    return {name: {k: float(v) for k, v in metric.compute().items()} | {"targets": int(metric.count)}
            for name, metric in scores.items()}


def nativeness(model, sequences: list[str], seed: int = 0) -> dict[str, float]:
    rng = random.Random(seed)
    shuffled = ["".join(rng.sample(s, len(s))) for s in sequences]
    native, times = [], []
    for start in range(0, len(sequences), 8):  # timed in chunks of 8; the chunks give the native PLL
        chunk = sequences[start : start + 8]
        begin = time.perf_counter()
        native.append(model.pseudo_log_likelihood(chunk))
        times.append((time.perf_counter() - begin) / len(chunk))
    native_pll = torch.cat(native)
    shuffled_pll = model.pseudo_log_likelihood(shuffled)
    return {
        "native_pll": float(native_pll.mean()),
        "shuffled_pll": float(shuffled_pll.mean()),
        "native_above_shuffled": float((native_pll > shuffled_pll).float().mean()),
        "pll_seconds_per_sequence": statistics.median(times),
        "sequences": len(sequences),
    }


def numbering_agreement(path, sequence_column: str = "sequence_alignment_aa", cdr3_column: str = "cdr3_aa") -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    numbered = agree = 0
    for row in rows:
        sequence = row[sequence_column]
        try:
            start, end = cdr_spans(sequence)["H3"]
        except MalformedDataError:
            continue
        numbered += 1
        agree += sequence[start:end] == row[cdr3_column]
    flanked = sum(f"C{row[cdr3_column]}W" in row[sequence_column] for row in rows)
    return {"sequences": len(rows), "numbered": numbered, "h3_exact": agree, "cdr3_between_C_and_W": flanked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="alignab-lm-oas", help="pretrained name in checkpoints/manifest.json")
    parser.add_argument("--data-dir", default="../shared/data/antibody")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.load_pretrained(args.name)
    data = AntibodySequenceDataModule(data_dir=args.data_dir, max_length=model.hparams.max_length)
    data.setup()
    scores = evaluate(model, data)
    native = nativeness(model, data.split_sequences("test"))
    numbering = numbering_agreement(data.find_file(data.file))
    print(f"# {args.name} on {len(data.test_set)} held-out OAS heavy chains "
          f"({platform.machine()}, torch {torch.__version__}, {args.threads} thread(s))\n")
    print("| scorer | acc | ppl | acc CDR-H3 | ppl CDR-H3 |")
    print("|---|---|---|---|---|")
    for scorer in ("lm", "position", "unigram"):
        a, h = scores[f"{scorer}_all"], scores[f"{scorer}_h3"]
        print(f"| {scorer} | {a['acc']:.3f} | {a['ppl']:.2f} | {h['acc']:.3f} | {h['ppl']:.2f} |")
    print(f"\ntargets: {scores['lm_all']['targets']} overall, {scores['lm_h3']['targets']} in CDR-H3; "
          f"unnumbered sequences in the file: {data.unnumbered} of {len(data.sequences)}")
    print(f"PLL per residue: native {native['native_pll']:.3f}, shuffled {native['shuffled_pll']:.3f}; "
          f"native ranked above its shuffle for {100 * native['native_above_shuffled']:.1f} % of "
          f"{native['sequences']} sequences; one sequence's PLL takes {1000 * native['pll_seconds_per_sequence']:.1f} ms")
    print(f"IMGT rule vs OAS cdr3_aa: {numbering['numbered']} of {numbering['sequences']} numbered, "
          f"{numbering['h3_exact']} exact CDR-H3 matches; {numbering['cdr3_between_C_and_W']} annotated CDR3s "
          "sit literally between C and W")
    print(json.dumps({"benchmark": "alignab_lm", "name": args.name, "scores": scores, "nativeness": native,
                      "numbering": numbering,
                      "threads": args.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
