"""Prompt tuning of ``lm-pydoc`` on held-out docstrings: the ``num_virtual_tokens`` sweep and the init
ablation of ``docs/prompt_tuning.md``, beside LoRA and full fine-tuning from ``docs/lora.md``.

Each run is ``python -m zoo fit --config configs/prompt_tuning/docstrings.yaml [overrides]
--trainer.default_root_dir=runs/prompt_tuning/<run>``, then ``python -m zoo test`` of its best
checkpoint (``--trainer.default_root_dir=runs/prompt_tuning/<run>/test``), one at a time, in fresh
processes with ``OMP_NUM_THREADS=1``. ``--collect`` skips the runs and reads the run folders.

The LoRA and full fine-tuning numbers are not rerun: they are quoted from ``docs/lora.md`` (same
data, batch, 300 steps; ``configs/lora/finetune_docstrings.yaml``) in :data:`QUOTED`.

    python benchmarks/prompt_tuning/docstrings_sweep.py [--collect]
    python benchmarks/prompt_tuning/docstrings_sweep.py --seeds 1 2 --runs m1 m16 m64 [--collect]

Writes ``docs/prompt_tuning/docstrings.json`` and ``docs/prompt_tuning/docstrings.png``. With
``--seeds``, run ``<run>`` with seed ``s > 0`` is ``--seed_everything=s`` in the folder
``runs/prompt_tuning/<run>_seed<s>`` (seed 0 is the run folder itself); the seed draws the prompt's
init (its vocabulary rows), while the data split and the training order stay those of
``data.seed = 0``; a seed run whose folder already holds a test is not rerun. It writes
``docs/prompt_tuning/docstrings_seeds.json``: per run the test and best
val perplexities of seed 0 and the given seeds, their mean and sample standard deviation.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/prompt_tuning/docstrings.yaml"
DOCS = ROOT / "docs" / "prompt_tuning"

#: run name -> CLI overrides of the config (which is m = 16, vocab init, lr 0.3)
RUNS = {
    "m1": ["--model.num_virtual_tokens=1"],
    "m4": ["--model.num_virtual_tokens=4"],
    "m16": [],
    "m64": ["--model.num_virtual_tokens=64"],
    "m16_text": ["--model.prompt_init=text", "--model.prompt_init_text=Return the value"],
    "m16_random": ["--model.prompt_init=random"],
}

#: docs/lora.md, "LoRA fine-tuning" table: (run, trainable parameters, docstrings test ppl)
QUOTED = [
    ("before fine-tuning (lm-pydoc)", 0, 8.691),
    ("LoRA r=1 partial", 448, 8.000),
    ("LoRA r=2 partial", 896, 7.810),
    ("LoRA r=4 partial", 1792, 7.717),
    ("LoRA r=8 partial", 3584, 7.525),
    ("LoRA r=4 full (q, k, v)", 2560, 7.632),
    ("full fine-tuning", 109056, 5.457),
]


def seeded(name: str, seed: int) -> tuple[str, list[str]]:
    """Folder name and overrides of run ``name`` with ``seed_everything = seed`` (seed 0: the run itself)."""
    return (name, RUNS[name]) if seed == 0 else (f"{name}_seed{seed}", [*RUNS[name], f"--seed_everything={seed}"])


def run(name: str, overrides: list[str]) -> float:
    """Fit and test one run in fresh processes; returns the fit's wall seconds."""
    folder = f"runs/prompt_tuning/{name}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = ["--trainer.enable_progress_bar=false"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "zoo", "fit", "--config", CONFIG, f"--trainer.default_root_dir={folder}",
                    *quiet, *overrides], cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - start
    best = sorted((ROOT / folder / "checkpoints").glob("best-*.ckpt"))[-1]
    subprocess.run([sys.executable, "-m", "zoo", "test", "--config", CONFIG,
                    f"--trainer.default_root_dir={folder}/test", *quiet, *overrides, "--ckpt_path", str(best)],
                   cwd=ROOT, env=env, check=True)
    return wall


def latest(folder: Path, name: str) -> Path:
    return sorted(folder.glob(f"version_*/{name}"), key=lambda p: int(p.parent.name.split("_")[1]))[-1]


def previous_walls() -> dict[str, float]:
    """Fit wall times of seed runs already in ``docstrings_seeds.json`` (runs with a finished test
    are not rerun)."""
    path = DOCS / "docstrings_seeds.json"
    if not path.is_file():
        return {}
    runs = json.loads(path.read_text())["runs"]
    return {seeded(r["run"], s["seed"])[0]: s["fit_wall_s"] for r in runs for s in r["seeds"] if "fit_wall_s" in s}


def seed_table(names: list[str], seeds: list[int], walls: dict[str, float]) -> dict:
    """Test and best val perplexity per seed (0 and ``seeds``) of each run, with mean and std."""
    table = []
    for name in names:
        rows = []
        for seed in [0, *[s for s in seeds if s != 0]]:
            folder, _ = seeded(name, seed)
            row = collect(folder)
            rows.append({"seed": seed, "test_ppl": row["test_ppl"], "best_val_ppl": min(row["val_ppl"].values()),
                         **({"fit_wall_s": walls[folder]} if folder in walls else {})})
        tests = [r["test_ppl"] for r in rows]
        table.append({"run": name, "num_virtual_tokens": collect(name)["num_virtual_tokens"], "seeds": rows,
                      "test_ppl_mean": round(statistics.mean(tests), 4),
                      "test_ppl_std": round(statistics.stdev(tests), 4) if len(tests) > 1 else 0.0})
    return {"config": CONFIG, "seed_override": "--seed_everything", "runs": table}


def collect(name: str) -> dict:
    folder = ROOT / "runs" / "prompt_tuning" / name
    rows = list(csv.DictReader(open(latest(folder, "metrics.csv"))))
    hparams = yaml.safe_load(latest(folder, "hparams.yaml").read_text())
    test = list(csv.DictReader(open(latest(folder / "test", "metrics.csv"))))[-1]
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"))[-1]
    return {
        "run": name,
        "num_virtual_tokens": hparams["num_virtual_tokens"],
        "prompt_init": hparams["prompt_init"],
        "lr": hparams["lr"],
        "trainable": hparams["params/trainable"],
        "val_ppl": {int(r["step"]) + 1: round(float(r["val/ppl"]), 4) for r in rows if r.get("val/ppl")},
        "best_checkpoint": best.name,
        "test_loss": round(float(test["test/loss"]), 4),
        "test_ppl": round(float(test["test/ppl"]), 4),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    sweep = [r for r in results if r["prompt_init"] == "vocab"]
    ax.plot([r["trainable"] for r in sweep], [r["test_ppl"] for r in sweep], "o-", color="C0",
            label="prompt tuning, vocab init (m = 1, 4, 16, 64)")
    for r in sweep:
        ax.annotate(f"m={r['num_virtual_tokens']}", (r["trainable"], r["test_ppl"]), textcoords="offset points",
                    xytext=(-6, -13), fontsize=8, color="C0")
    for r, marker in zip([r for r in results if r["prompt_init"] != "vocab"], ("s", "D")):
        ax.plot(r["trainable"], r["test_ppl"], marker, color="C0", mfc="none",
                label=f"prompt tuning m=16, {r['prompt_init']} init")
    lora = [q for q in QUOTED if q[0].endswith("partial")]
    ax.plot([q[1] for q in lora], [q[2] for q in lora], "o-", color="C1", label="LoRA r = 1, 2, 4, 8 (q, v), docs/lora.md")
    full_r4 = next(q for q in QUOTED if "full (q" in q[0])
    ax.plot(full_r4[1], full_r4[2], "s", color="C1", mfc="none", label="LoRA r = 4 (q, k, v), docs/lora.md")
    full = next(q for q in QUOTED if q[0] == "full fine-tuning")
    ax.plot(full[1], full[2], "*", ms=11, color="C3", label="full fine-tuning, docs/lora.md")
    ax.axhline(QUOTED[0][2], ls="--", color="gray", lw=1, label="lm-pydoc before tuning")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("held-out docstrings perplexity (test)")
    ax.set_title("lm-pydoc (109 K parameters) adapted to stdlib docstrings, 300 steps", fontsize=10)
    ax.legend(fontsize=7.5, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="read the run folders, do not train")
    parser.add_argument("--seeds", type=int, nargs="+", help="run these seeds (besides seed 0) of --runs only")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS), help="runs for --seeds")
    args = parser.parse_args()
    if args.seeds:
        walls = previous_walls()
        for name in args.runs:
            for seed in args.seeds:
                folder, overrides = seeded(name, seed)
                if not args.collect and not (ROOT / "runs" / "prompt_tuning" / folder / "test").is_dir():
                    walls[folder] = round(run(folder, overrides), 1)
        out = seed_table(args.runs, args.seeds, walls)
        (DOCS / "docstrings_seeds.json").write_text(json.dumps(out, indent=1) + "\n")
        for r in out["runs"]:
            per_seed = " / ".join(f"{s['test_ppl']:.3f}" for s in r["seeds"])
            print(f"{r['run']:<6} test ppl {per_seed}: {r['test_ppl_mean']:.3f} +/- {r['test_ppl_std']:.3f}")
        print(json.dumps(out))
        return
    walls = {} if args.collect else {name: round(run(name, overrides), 1) for name, overrides in RUNS.items()}
    results = [{**collect(name), **({"fit_wall_s": walls[name]} if name in walls else {})} for name in RUNS]
    out = {"config": CONFIG, "runs": results,
           "quoted_from_docs_lora_md": [{"run": q[0], "trainable": q[1], "test_ppl": q[2]} for q in QUOTED]}
    (DOCS / "docstrings.json").parent.mkdir(parents=True, exist_ok=True)
    (DOCS / "docstrings.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(results, DOCS / "docstrings.png")
    print(f"{'run':<12}{'m':>4}{'init':>8}{'trainable':>11}{'val ppl (last)':>16}{'test ppl':>10}")
    for r in results:
        print(f"{r['run']:<12}{r['num_virtual_tokens']:>4}{r['prompt_init']:>8}{r['trainable']:>11,}"
              f"{list(r['val_ppl'].values())[-1]:>16.3f}{r['test_ppl']:>10.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
