"""The DeAl experiment end to end: trace the teacher, search the sites, transplant, measure.

``python -m zoo deal --teacher deal-aligned --student deal-unaligned --out runs/deal`` (``zoo.deal.cli``):

1. **Measure** the base (if given), the teacher and the student: DSR on the held-out harmful
   requests (``test``: trained templates with unseen fillers; ``test_templates``: a template never
   trained on), benign exact match and over-refusal on held-out benign requests, the perplexity of
   the right answers to held-out benign requests (``ppl``), and of held-out pydoc text
   (``pydoc_ppl``; ``data_modules.text``, the base's pre-training domain, test split).
2. **Trace** the teacher (``zoo.deal.tracing.causal_trace``): the score is the probability of the
   first token of the teacher's own (refusing) answer; the request's words are corrupted. Per layer
   and module kind, averaged over ``trace_prompts`` held-out-free (validation) harmful requests, and
   per position for one request (a ROME-style heat map).
3. **Search** (``zoo.deal.ddmin``, :func:`search_sites`): ddmin over the MLPs of all layers (the
   paper's search space), then over MLPs and attention blocks together; then over the projections
   (gate / up / down, q / k / v / o) of the sites each search kept. The oracle transplants a
   candidate set into the student and passes when its DSR on the *validation* harmful requests
   reaches ``threshold`` times the DSR of transplanting the whole search space; a space whose full
   transplant does not raise the student's DSR is reported and skipped. Test requests are never
   seen by the search.
4. **Compare** transplants: the sets found, the paper's "middle layers" (the ``k`` MLPs around the
   middle, ``k`` = the layers found), random sets of the found size from the same space, all MLPs,
   all attention blocks, both; each with DSR, the refusal's NLL (``metrics.refusal_nll``: how close
   to refusing, also where the greedy answer is not yet a refusal), benign accuracy, perplexity
   and the share of parameters changed.

Everything is written to ``out``: ``results.json`` (every number), ``trace_layers.png``,
``trace_example.png``, ``transplants.png``; a table goes to stdout.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from data_modules.instructions import Example, build_examples, format_request
from data_modules.text import ByteTokenizer, TextDataModule
from zoo.core.errors import ConfigError
from zoo.core.plots import save_figure
from zoo.deal.ddmin import ddmin
from zoo.deal.metrics import answer_nll, answer_requests, behaviour_scores, refusal_nll, text_perplexity
from zoo.deal.tracing import causal_trace, plot_trace, token_probability
from zoo.deal.transplant import (
    changed_parameter_share,
    decoder_layers,
    format_site,
    parse_site,
    transplant,
)

__all__ = ["Evaluator", "middle_layers", "run_deal", "trace_teacher"]

def middle_layers(num_layers: int, k: int) -> list[int]:
    """The ``k`` consecutive layers centred on the middle of ``num_layers`` (the paper's choice)."""
    if not 1 <= k <= num_layers:
        raise ConfigError(f"middle_layers: k must be in 1 .. {num_layers}, got {k}")
    start = (num_layers - k) // 2
    return list(range(start, start + k))


@dataclass
class Evaluator:
    """Scores a model on fixed request sets and held-out text (module docstring, step 1)."""

    examples: dict[str, list[Example]]
    text_tokens: torch.Tensor
    max_new_tokens: int = 24
    search_tokens: int = 12
    calls: int = field(default=0, init=False)

    def behaviour(self, model: nn.Module, split: str, max_new_tokens: int | None = None) -> dict[str, float]:
        chosen = self.examples[split]
        answers = answer_requests(model, [e.request for e in chosen], max_new_tokens or self.max_new_tokens)
        return behaviour_scores(chosen, answers)

    def search_dsr(self, model: nn.Module) -> float:
        """DSR on the validation harmful requests (the search's oracle; short answers suffice)."""
        self.calls += 1
        harmful = [e for e in self.examples["val"] if e.kind == "harmful"]
        answers = answer_requests(model, [e.request for e in harmful], self.search_tokens)
        return behaviour_scores(harmful, answers)["dsr"]

    def full(self, model: nn.Module) -> dict[str, float]:
        test = self.behaviour(model, "test")
        benign = [e for e in self.examples["test"] if e.kind == "benign"]
        return {"dsr": test["dsr"], "dsr_unseen_template": self.behaviour(model, "test_templates")["dsr"],
                "refusal_nll": refusal_nll(model, [e.request for e in self.examples["test"] if e.kind == "harmful"]),
                "benign_acc": test["benign_acc"], "over_refusal": test["over_refusal"],
                "ppl": math.exp(answer_nll(model, [e.request for e in benign], [e.response for e in benign])[1]),
                "pydoc_ppl": text_perplexity(model, self.text_tokens)}


def _request_span(tokenizer: ByteTokenizer, request: str) -> tuple[list[int], list[int]]:
    """Token ids of the formatted request (with ``<bos>``) and the positions of the request's words."""
    ids = tokenizer.encode(format_request(request), bos=True)
    start = 1 + len("Request: ".encode())
    return ids, list(range(start, start + len(request.encode())))


def trace_teacher(teacher: nn.Module, requests: Sequence[str], kinds: Sequence[str], samples: int = 10,
                  seed: int = 0, progress: Callable[[str], None] = print) -> tuple[dict[str, list[float]], dict]:
    """Mean indirect effect per (kind, layer) over ``requests`` (restoring each module at every
    position), and one per-position trace of the first request (module docstring, step 2)."""
    tokenizer = ByteTokenizer()
    sums = {kind: torch.zeros(len(decoder_layers(teacher)), dtype=torch.float64) for kind in kinds}
    example = None
    for n, request in enumerate(requests):
        ids, positions = _request_span(tokenizer, request)
        with torch.no_grad():
            target = int(teacher(torch.tensor([ids]))[0, -1].argmax())
        result = causal_trace(teacher, torch.tensor(ids), token_probability(target), kinds=kinds,
                              corrupt_positions=positions, samples=samples, seed=seed + n, per_position=False)
        for kind in kinds:
            sums[kind] += result.indirect_effect(kind)
        if example is None:
            example = causal_trace(teacher, torch.tensor(ids), token_probability(target), kinds=kinds,
                                   corrupt_positions=positions, samples=samples, seed=seed, per_position=True)
            example_labels = [tokenizer.decode([t]) if t < 256 else "<bos>" for t in ids]
        progress(f"  traced {n + 1}/{len(requests)}: clean {result.clean_score:.3f}, corrupted "
                 f"{result.corrupted_score:.3f}")
    means = {kind: (sums[kind] / len(requests)).tolist() for kind in kinds}
    return means, {"result": example, "labels": example_labels, "request": requests[0]}


def _plot_layer_effects(means: dict[str, list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for kind, values in means.items():
        if kind == "layer":  # restoring a whole layer's output at every position is the clean run: no information
            continue
        ax.plot(range(len(values)), values, marker="o", label=kind)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("indirect effect (restored - corrupted)")
    ax.set_title("Causal trace of the teacher's refusal (module restored at all positions, mean)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _plot_transplants(rows: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = range(len(names))
    for ax, (metric, label) in zip(axes, (("dsr", "DSR, held-out harmful"), ("benign_acc", "benign exact match"))):
        values = [rows[n][metric] for n in names]
        errors = [rows[n].get(f"{metric}_std", 0.0) for n in names]
        ax.bar(x, values, yerr=errors, color="tab:blue" if metric == "dsr" else "tab:green")
        ax.set_xticks(list(x), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(label)
    return save_figure(fig, path)


def _projections(site: tuple[int, str]) -> list[tuple[int, str]]:
    layer, module = site
    names = ("gate_proj", "up_proj", "down_proj") if module == "mlp" else ("q_proj", "k_proj", "v_proj", "o_proj")
    return [(layer, f"{module}.{name}") for name in names]


def search_sites(student: nn.Module, teacher: nn.Module, pool: list, evaluator: Evaluator, threshold: float,
                 student_dsr: float) -> dict:
    """ddmin over ``pool`` (module docstring, step 3), then over the projections of what it kept.
    The oracle passes when the validation DSR of the transplant reaches ``threshold`` times the DSR
    of transplanting the whole pool; a pool whose transplant does not beat the student is skipped."""
    ceiling = evaluator.search_dsr(transplant(student, teacher, pool))
    outcome: dict = {"pool": [format_site(s) for s in pool], "validation_dsr_of_pool": ceiling}
    if ceiling <= student_dsr:
        outcome["minimal"] = None
        outcome["skipped"] = (f"transplanting the whole pool does not raise the student's validation DSR "
                              f"({student_dsr:.3f} -> {ceiling:.3f}); nothing to search")
        return outcome
    target = threshold * ceiling

    def oracle(sites: list) -> bool:
        return evaluator.search_dsr(transplant(student, teacher, sites)) >= target

    layers = ddmin(pool, oracle)
    projections = ddmin([p for site in layers.minimal for p in _projections(site)], oracle)
    outcome.update(target=target, minimal=[format_site(s) for s in layers.minimal], tests=layers.tests,
                   history=[([format_site(s) for s in subset], ok) for subset, ok in layers.history],
                   projections={"minimal": [format_site(s) for s in projections.minimal], "tests": projections.tests})
    return outcome


def _mean_std(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if isinstance(r[key], (int, float))]
        mean = sum(values) / len(values)
        out[key] = mean
        out[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
    return out


def run_deal(teacher: nn.Module, student: nn.Module, out: str | Path, base: nn.Module | None = None,
             threshold: float = 0.9, random_sets: int = 5, trace_prompts: int = 12, trace_samples: int = 10,
             seed: int = 0, max_new_tokens: int = 24, progress: Callable[[str], None] = print) -> dict:
    """Run the experiment of the module docstring; returns (and writes) the results."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold!r}")
    if random_sets < 0 or trace_prompts < 0:
        raise ConfigError(f"random_sets and trace_prompts must be >= 0, got {random_sets} and {trace_prompts}")
    layers = len(decoder_layers(student))
    if len(decoder_layers(teacher)) != layers:
        raise ConfigError(f"teacher has {len(decoder_layers(teacher))} layers, student {layers}; expected one "
                          f"architecture (both fine-tuned from the same base)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    examples = build_examples(seed=0)  # the split the family was trained on (InstructionDataModule seed 0)
    text = TextDataModule(corpus="pydoc_topics")
    text.setup("test")
    evaluator = Evaluator(examples, text.split_tokens["test"], max_new_tokens=max_new_tokens)
    results: dict = {"layers": layers, "threshold": threshold, "models": {}, "transplants": {}}

    progress("measuring the family ...")
    for name, model in (("base", base), ("teacher", teacher), ("student", student)):
        if model is not None:
            results["models"][name] = evaluator.full(model)

    if trace_prompts:
        progress(f"tracing the teacher on {trace_prompts} validation harmful requests ...")
        harmful = [e.request for e in examples["val"] if e.kind == "harmful"][:trace_prompts]
        kinds = ("layer", "self_attn", "mlp", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
        means, example = trace_teacher(teacher, harmful, kinds, samples=trace_samples, seed=seed, progress=progress)
        results["trace"] = {"requests": harmful, "mean_indirect_effect": means, "example": {
            "request": example["request"], **example["result"].to_dict()}}
        _plot_layer_effects(means, out / "trace_layers.png")
        plot_trace(example["result"], example["labels"], out / "trace_example.png",
                   title=f"teacher, {example['request']!r}")

    student_search = evaluator.search_dsr(student)
    pools = {"MLPs": [(i, "mlp") for i in range(layers)],
             "MLPs + attention": [(i, m) for i in range(layers) for m in ("mlp", "self_attn")]}
    results["search"] = {"student_validation_dsr": student_search}
    found: dict[str, list] = {}
    for label, pool in pools.items():
        progress(f"delta debugging over {label} ...")
        outcome = search_sites(student, teacher, pool, evaluator, threshold, student_search)
        results["search"][label] = outcome
        if outcome.get("minimal") is not None:
            found[label] = [parse_site(site) for site in outcome["minimal"]]
            found[f"{label}, projections"] = [parse_site(site) for site in outcome["projections"]["minimal"]]
            progress(f"  {label}: {outcome['minimal']} ({outcome['tests']} tests); projections "
                     f"{outcome['projections']['minimal']}")
        else:
            progress(f"  {label}: {outcome['skipped']}")

    progress("measuring the transplants ...")
    primary = "MLPs" if "MLPs" in found else "MLPs + attention" if "MLPs + attention" in found else None
    k = len({i for i, _ in found[primary]}) if primary else max(1, layers // 3)
    variants: dict[str, list] = {f"found ({name})": sites for name, sites in found.items()}
    variants[f"middle {k} MLPs (paper)"] = [(i, "mlp") for i in middle_layers(layers, k)]
    variants["all MLPs"] = pools["MLPs"]
    variants["all attention"] = [(i, "self_attn") for i in range(layers)]
    variants["all MLPs + attention"] = pools["MLPs + attention"]
    for name, sites in variants.items():
        child = transplant(student, teacher, sites)
        results["transplants"][name] = {"sites": [format_site(s) for s in sites],
                                        "param_share": changed_parameter_share(student, sites), **evaluator.full(child)}
    rng = random.Random(seed)
    pool = pools[primary] if primary else pools["MLPs"]
    size = len(found[primary]) if primary else k
    draws = []
    for _ in range(random_sets):
        sites = sorted(rng.sample(pool, size))
        draws.append({"sites": [format_site(s) for s in sites], "param_share": changed_parameter_share(student, sites),
                      **evaluator.full(transplant(student, teacher, sites))})
    if draws:
        summary = _mean_std([{key: v for key, v in d.items() if key != "sites"} for d in draws])
        results["transplants"][f"random {size} of {primary or 'MLPs'} (x{random_sets})"] = {
            "sites": [d["sites"] for d in draws], **summary}
    results["oracle_calls"] = evaluator.calls
    results["seconds"] = time.perf_counter() - started
    table = {**{name: results["models"][name] for name in results["models"]}, **results["transplants"]}
    _plot_transplants(table, out / "transplants.png")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    progress(format_table(table))
    return results


def format_table(rows: dict[str, dict]) -> str:
    """A plain-text table of the measured models and transplants."""
    head = (f"{'model':<36} {'DSR':>6} {'DSR new tpl':>11} {'refusal NLL':>11} {'benign':>7} {'over-ref':>8} "
            f"{'ppl':>7} {'pydoc ppl':>9} {'params':>7}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        share = f"{100 * r['param_share']:.1f}%" if "param_share" in r else "-"
        lines.append(f"{name:<36} {r['dsr']:>6.3f} {r['dsr_unseen_template']:>11.3f} {r['refusal_nll']:>11.3f} "
                     f"{r['benign_acc']:>7.3f} {r['over_refusal']:>8.3f} {r['ppl']:>7.3f} {r['pydoc_ppl']:>9.1f} {share:>7}")
    return "\n".join(lines)
