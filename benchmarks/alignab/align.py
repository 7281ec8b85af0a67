"""AlignAb stage 3: held-out evaluation of energy-aligned co-design models beside the unaligned one.

For every run folder ``<runs>/<method>_s<seed>`` holding a ``CoDesignAlignment`` checkpoint (the last one), and for
the unaligned starting model (``--init``), ``--designs`` designs of each held-out CDR-H3 (the test split of the
config's ``ComplexDataModule``) by ``--steps`` respaced reverse steps at temperature 1, one sampling seed for all;
per design: CDR-antigen E_Rep and E_nonRep, CDR E_total and the dG proxy (side chains from the rotamer library of
the training complexes, ``zoo.alignab.preferences``; the energy PROXY, not Rosetta), amino-acid recovery, C-alpha
RMSD after framework superposition and the LM's pseudo-log-likelihood of the designed loop in its heavy chain.

Hypervolume: per held-out complex, of the designs' (E_Rep, E_nonRep) points (minimised) against one reference
point per complex, the median E_Rep and E_nonRep of the UNALIGNED model's designs of that complex (fixed for every
method), divided by the box between that point and the best value of each energy over every method's designs of
the complex (so 0..1); averaged over complexes.

    python benchmarks/alignab/align.py --runs runs/alignab/align --config configs/alignab/align_pareto.yaml \
        --out docs/alignab/align [--designs 8] [--steps 20] [--threads 1]

Prints a table (mean +- std over seeds of the per-model means) and one JSON line; writes ``align.json`` and
``align_fronts.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from codesign import Scorer, loop_pll  # noqa: E402

from data_modules.complexes import ComplexDataModule  # noqa: E402
from data_modules.residues import AMINO_ACIDS  # noqa: E402
from zoo.alignab import CoDesignAlignment  # noqa: E402
from zoo.alignab.metrics import hypervolume, nondominated_fronts  # noqa: E402
from zoo.alignab.preferences import design_energies  # noqa: E402
from zoo.core.plots import save_figure  # noqa: E402
from zoo.core.registry import load_pretrained  # noqa: E402

METRICS = ("rep", "nonrep", "total", "dg", "aar", "rmsd", "pll")
ORDER = ("unaligned", "rep", "nonrep", "weighted", "pareto", "pareto_dominance")


def data_module(config: str) -> ComplexDataModule:
    args = yaml.safe_load(open(config))["data"]["init_args"]
    dm = ComplexDataModule(**args)
    dm.setup()
    return dm


def evaluate(model: CoDesignAlignment, dm: ComplexDataModule, lm, designs: int, steps: int, seed: int) -> dict:
    """Per held-out complex, per design: the METRICS."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    test = dm.test_set
    out = {}
    for row in range(len(test)):
        batch = test.__getitems__([row])
        native, designed, design = model.policy.design(batch, designs, generator, steps=steps)
        repeated = {k: v.repeat_interleave(designs, 0) for k, v in batch.items()}
        scores = model.policy.evaluate(native, designed, design, repeated)
        patch = {k: v[0] for k, v in batch.items()}
        energy = design_energies(patch, designed.aa, designed.pos, designed.rot, model.library)
        complex_ = dm.complexes[int(batch["complex"][0, 0])]
        index = batch["index"][0][design[0]]
        sequences, loops = [], []
        for i in range(designs):
            sequence = list(complex_.sequence())
            for j, a in zip(index.tolist(), designed.aa[i][design[i]].tolist()):
                sequence[j] = AMINO_ACIDS[a]
            domain, h3, _ = Scorer.heavy_domain(complex_, "".join(sequence))
            sequences.append(domain)
            loops.append(h3)
        pll = loop_pll(lm, sequences, loops)
        out[complex_.name] = {"rep": energy["rep"].tolist(), "nonrep": energy["nonrep"].tolist(),
                              "total": energy["total"].tolist(), "dg": energy["dg"].tolist(),
                              "aar": scores["aar"].tolist(), "rmsd": scores["rmsd"].tolist(), "pll": pll}
    return out


def hypervolumes(results: dict[str, dict], complexes: list[str]) -> tuple[dict[str, float], list[str]]:
    """Normalised hypervolume per model (module docstring), averaged over the complexes where some design strictly
    dominates the reference point; the complexes where none does (every model scores 0 there) are returned apart."""
    out = {name: [] for name in results}
    degenerate = []
    for c in complexes:
        every = np.concatenate([np.stack([r[c]["rep"], r[c]["nonrep"]], 1) for r in results.values()])
        unaligned = np.stack([results["unaligned_s0"][c]["rep"], results["unaligned_s0"][c]["nonrep"]], 1)
        reference = np.median(unaligned, 0)
        ideal = every.min(0)
        if not (ideal < reference).all():
            degenerate.append(c)
            continue
        box = np.prod(reference - ideal)
        for name, r in results.items():
            points = np.stack([r[c]["rep"], r[c]["nonrep"]], 1)
            out[name].append(hypervolume(points, reference) / box)
    return {name: float(np.mean(v)) if v else float("nan") for name, v in out.items()}, degenerate


def method_of(name: str) -> str:
    return name.rsplit("_s", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/alignab/align")
    parser.add_argument("--config", default="configs/alignab/align_pareto.yaml")
    parser.add_argument("--init", default="alignab-codesign-h3", help="the unaligned model (registered name)")
    parser.add_argument("--out", default="docs/alignab/align")
    parser.add_argument("--designs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dm = data_module(args.config)
    lm = load_pretrained("alignab-lm-oas")
    models: dict[str, CoDesignAlignment] = {}
    for folder in sorted(Path(args.runs).glob("*_s*")):
        checkpoints = sorted(folder.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        if checkpoints:
            models[folder.name] = CoDesignAlignment.load_from_checkpoint(checkpoints[-1], map_location="cpu",
                                                                         weights_only=True)
    if not models:
        raise SystemExit(f"no run with a checkpoint under {args.runs}/<method>_s<seed>")
    first = next(iter(models.values()))
    unaligned = CoDesignAlignment(init_from=args.init, rotamers=first.hparams.rotamers)
    unaligned.library_local.copy_(first.library_local)  # the same side chains for every model
    unaligned.library_mask.copy_(first.library_mask)
    models = {"unaligned_s0": unaligned, **models}
    results, seconds = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        results[name] = evaluate(model, dm, lm, args.designs, args.steps, args.seed)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    complexes = dm.splits["test"]
    complexes = [c for c in complexes if c in results["unaligned_s0"]]
    hv, degenerate = hypervolumes(results, complexes)
    if degenerate:
        print(f"hypervolume: no design beats the unaligned median on both energies for {degenerate}; left out")
    per_model = {name: {m: float(np.mean([np.mean(r[c][m]) for c in complexes])) for m in METRICS}
                 | {f"{m}_median": float(np.mean([np.median(r[c][m]) for c in complexes])) for m in ("rep", "nonrep")}
                 | {"hypervolume": hv[name]} for name, r in results.items()}
    found = {method_of(n) for n in per_model}
    methods = [m for m in ORDER if m in found] + sorted(found - set(ORDER))
    columns = [*METRICS, "rep_median", "nonrep_median", "hypervolume"]
    table = {}
    print(f"\n{'method':<10} {'seeds':>5} " + " ".join(f"{c:>17}" for c in columns))
    for method in methods:
        names = [n for n in per_model if method_of(n) == method]
        row = {}
        for c in columns:
            values = [per_model[n][c] for n in names]
            row[c] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        table[method] = {"seeds": len(names), **{c: list(v) for c, v in row.items()}}
        print(f"{method:<10} {len(names):>5} " + " ".join(f"{m:>9.3f} ± {s:<5.3f}" for m, s in row.values()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "alignab_align", "designs": args.designs, "steps": args.steps, "seed": args.seed,
              "threads": args.threads, "complexes": complexes, "hypervolume_left_out": degenerate, "table": table,
              "per_model": per_model,
              "seconds": seconds, "torch": torch.__version__}
    (out / "align.json").write_text(json.dumps({**report, "designs_by_model": results}, indent=1))
    plot(results, per_model, complexes, out / "align_fronts.png")
    print(json.dumps(report))


def plot(results: dict, per_model: dict, complexes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"unaligned": "black", "rep": "tab:red", "nonrep": "tab:blue", "weighted": "tab:purple",
              "pareto": "tab:green", "pareto_dominance": "tab:olive"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, values in per_model.items():
        method = method_of(name)
        axes[0].scatter(values["rep_median"], values["nonrep_median"], color=colors.get(method, "grey"),
                        label=method, s=40)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[0].legend(unique.values(), unique.keys(), fontsize=8)
    axes[0].set_xlabel("E_Rep (median per complex, mean over complexes)")
    axes[0].set_ylabel("E_nonRep (same)")
    axes[0].set_title("one point per model (method x seed)")
    example = complexes[0]
    for name, r in results.items():
        method = method_of(name)
        if not name.endswith("_s0"):
            continue
        points = np.stack([r[example]["rep"], r[example]["nonrep"]], 1)
        front = points[nondominated_fronts(points)[0]]
        front = front[np.argsort(front[:, 0])]
        axes[1].scatter(points[:, 0], points[:, 1], color=colors.get(method, "grey"), s=12, alpha=0.5)
        axes[1].step(front[:, 0], front[:, 1], where="post", color=colors.get(method, "grey"), label=method)
    axes[1].set_xscale("symlog")
    axes[1].set_xlabel("E_Rep (proxy units, symlog)")
    axes[1].set_ylabel("E_nonRep")
    axes[1].set_title(f"designs of held-out {example} and each method's front (seed 0)")
    axes[1].legend(fontsize=8)
    fig.suptitle("AlignAb stage 3 on held-out CDR-H3 (energy PROXY, not Rosetta; lower is better)")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
