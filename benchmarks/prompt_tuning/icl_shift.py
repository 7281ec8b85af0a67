"""Prompt-tuning the frozen shipped ICL transformer ``icl-linear-d5`` toward shifted task distributions:
in-context error before and after, against the number of virtual tokens, over seeds.

The base (``zoo.load_pretrained("icl-linear-d5")``: GPT-2 backbone, width 64, 2 layers, trained on
``y = w^T x``, ``x ~ N(0, I_5)``, ``w ~ N(0, I_5 / 5)``, 11 examples per prompt) stays frozen; a
soft prompt ``P [m, 64]`` after its read-in (``zoo.prompt_tuning.icl_prompt.PromptedRegressor``)
is trained on prompts of a shifted task:

- ``scaled``: ``y = 3 w^T x`` (labels 3x the training scale; ``Var y = 9``);
- ``noisy``: ``y = w^T x + eps``, ``eps ~ N(0, 1)`` (``data_modules.icl_tasks`` ``noisy_linear`` with
  ``noise_std = 1``; ``Var y = 2``).

Error: the normalized squared error ``(yhat_i - y_i)^2 / Var(y)`` averaged over prompts, reported as
the mean over the 11 positions (0 to 10 in-context examples) and at the last (10 examples); 1 is the
error of predicting 0. References on the same prompts: ``scaled``, the frozen model on the unscaled
labels, rescaled (``3 f(xs, ys / 3)``: what a perfect label-scale correction gives); ``noisy``, the
Bayes-optimal posterior mean (ridge with ``lambda = noise^2 d``, ``(X^T X + 5 I)^{-1} X^T y`` from the
examples before each position). ``in-distribution`` is the tuned model's error on the original task.

Training: Adam on the prompt only, ``--steps`` steps of ``--batch`` fresh prompts (drawn from a
generator seeded with the seed), cosine schedule, init ``N(0, init_scale^2)`` from the seed
(``--init-scale``, 1 by default: PEFT's random init). The learning rate
is chosen on 512 validation prompts (``--select``: seed 0, each task, at ``--select-m`` tokens); the
1,024 test prompts are fixed across seeds and never used for the choice.

    python benchmarks/prompt_tuning/icl_shift.py --select [--select-m 4]   # icl_shift_select_m4.json
    python benchmarks/prompt_tuning/icl_shift.py --lr 0.1 [--threads 1]    # docs/prompt_tuning/icl_shift.{json,png}
    python benchmarks/prompt_tuning/icl_shift.py --select --select-m 16 [--init-scale 0.1 --lrs 0.01 0.03 0.1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from data_modules.icl_tasks import sample_prompts
from zoo.core.plots import save_figure
from zoo.prompt_tuning.icl_prompt import load_prompted_regressor

BASE = "icl-linear-d5"
N_DIMS, N_POINTS = 5, 11
TASKS = {"scaled": ("linear", {}, 3.0), "noisy": ("noisy_linear", {"noise_std": 1.0}, 1.0)}
TEST_SEED, VAL_SEED = 10_000, 20_000
OUT = Path(__file__).resolve().parents[2] / "docs" / "prompt_tuning"


def draw(task: str, num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num`` prompts ``(xs, ys, var)`` of the shifted task ``task`` (module docstring)."""
    kind, kwargs, scale = TASKS[task] if task in TASKS else ("linear", {}, 1.0)
    xs, ys, var = sample_prompts(kind, num, N_POINTS, N_DIMS, generator, **kwargs)
    return xs, scale * ys, scale**2 * var


def errors(pred: torch.Tensor, ys: torch.Tensor, var: torch.Tensor) -> dict[str, float]:
    per_position = ((pred - ys) ** 2 / var[:, None]).mean(0)
    return {"mean": float(per_position.mean()), "last": float(per_position[-1])}


def ridge(xs: torch.Tensor, ys: torch.Tensor, lam: float) -> torch.Tensor:
    """``x_i^T (X_{<i}^T X_{<i} + lam I)^{-1} X_{<i}^T y_{<i}`` at every position (0 at i = 0), fp64."""
    xs, ys = xs.double(), ys.double()
    pred = torch.zeros_like(ys)
    eye = torch.eye(xs.shape[-1], dtype=torch.float64)
    for i in range(1, xs.shape[1]):
        x, y = xs[:, :i], ys[:, :i]
        w = torch.linalg.solve(x.transpose(1, 2) @ x + lam * eye, (x.transpose(1, 2) @ y[..., None]))
        pred[:, i] = (xs[:, i : i + 1] @ w).squeeze(-1).squeeze(-1)
    return pred.float()


def reference(task: str, base, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    if task == "scaled":
        return TASKS["scaled"][2] * base(xs, ys / TASKS["scaled"][2])
    return ridge(xs, ys, TASKS["noisy"][1]["noise_std"] ** 2 * N_DIMS)


def tune(task: str, m: int, seed: int, lr: float, steps: int, batch: int, init_scale: float = 1.0):
    """A prompt of ``m`` tokens trained ``steps`` steps on ``task``; returns the tuned model."""
    torch.manual_seed(seed)  # the prompt's N(0, init_scale^2) init
    model = load_prompted_regressor(BASE, m, init_scale)
    optimizer = torch.optim.Adam(model.prompt.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        xs, ys, var = draw(task, batch, generator)
        loss = ((model(xs, ys) - ys) ** 2 / var[:, None]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def select(args) -> dict:
    rows = []
    for task in TASKS:
        xs, ys, var = draw(task, 512, torch.Generator().manual_seed(VAL_SEED))
        for lr in args.lrs:
            model = tune(task, args.select_m, 0, lr, args.steps, args.batch, args.init_scale)
            with torch.no_grad():
                row = {"task": task, "lr": lr, **errors(model(xs, ys), ys, var)}
            rows.append(row)
            print(f"select m {args.select_m} {task:6s} lr {lr:<6}: val nmse mean {row['mean']:.4f} last {row['last']:.4f}", flush=True)
    return {"select_m": args.select_m, "init_scale": args.init_scale, "select_rows": rows}


def sweep(args) -> dict:
    rows, base_rows = [], []
    original = draw("linear", 1024, torch.Generator().manual_seed(TEST_SEED))
    for task in TASKS:
        xs, ys, var = draw(task, 1024, torch.Generator().manual_seed(TEST_SEED))
        base = load_prompted_regressor(BASE, 1).base_model
        with torch.no_grad():
            base_rows.append({"task": task, "frozen": errors(base(xs, ys), ys, var),
                              "reference": errors(reference(task, base, xs, ys), ys, var),
                              "in_distribution": errors(base(*original[:2]), *original[1:])})
        print(f"{task}: frozen {base_rows[-1]['frozen']}, reference {base_rows[-1]['reference']}", flush=True)
        for m in args.lengths:
            for seed in args.seeds:
                start = time.perf_counter()
                model = tune(task, m, seed, args.lr, args.steps, args.batch, args.init_scale)
                with torch.no_grad():
                    row = {"task": task, "m": m, "seed": seed, "test": errors(model(xs, ys), ys, var),
                           "in_distribution": errors(model(*original[:2]), *original[1:]),
                           "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(f"{task} m {m:3d} seed {seed}: test nmse mean {row['test']['mean']:.4f} last "
                      f"{row['test']['last']:.4f}; in-distribution mean {row['in_distribution']['mean']:.4f} "
                      f"({row['seconds']} s)", flush=True)
    summary = []
    for task in TASKS:
        for m in args.lengths:
            picked = [r for r in rows if r["task"] == task and r["m"] == m]
            entry = {"task": task, "m": m}
            for key in ("mean", "last"):
                values = [r["test"][key] for r in picked]
                entry[f"test_{key}_mean"] = statistics.mean(values)
                entry[f"test_{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            entry["in_distribution_mean"] = statistics.mean(r["in_distribution"]["mean"] for r in picked)
            summary.append(entry)
    return {"base": BASE, "lr": args.lr, "init_scale": args.init_scale, "steps": args.steps, "batch": args.batch, "seeds": args.seeds,
            "lengths": args.lengths, "frozen": base_rows, "rows": rows, "summary": summary}


def plot(res: dict) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(10, 4))
    for ax, task in zip(axes, TASKS):
        frozen = next(r for r in res["frozen"] if r["task"] == task)
        entries = [s for s in res["summary"] if s["task"] == task]
        ax.errorbar([s["m"] for s in entries], [s["test_mean_mean"] for s in entries],
                    yerr=[s["test_mean_std"] for s in entries], fmt="o-", capsize=3,
                    label="prompt-tuned, mean +/- std of 3 seeds")
        ax.axhline(frozen["frozen"]["mean"], color="gray", ls="--", label="frozen, no prompt")
        label = "frozen model, labels rescaled: 3 f(xs, ys / 3)" if task == "scaled" else "Bayes-optimal ridge"
        ax.axhline(frozen["reference"]["mean"], color="C2", ls=":", label=label)
        ax.set(xscale="log", xlabel="virtual tokens m", ylabel="test nmse (mean over positions)",
               title=f"{res['base']} on '{task}' labels")
        ax.legend(fontsize=8)
    save_figure(fig, OUT / "icl_shift.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--select", action="store_true", help="only the lr choice on validation prompts")
    parser.add_argument("--select-m", type=int, default=4, help="prompt length of the lr choice")
    parser.add_argument("--out", default="icl_shift", help="name of the JSON (and PNG) in docs/prompt_tuning")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--init-scale", type=float, default=1.0, help="prompt init N(0, init_scale^2)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON, run nothing")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((OUT / "icl_shift.json").read_text()))
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    res = {"benchmark": "prompt_icl_shift", "machine": platform.machine(), "torch": torch.__version__,
           "threads": args.threads, **(select(args) if args.select else sweep(args))}
    res["seconds"] = round(time.perf_counter() - start, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    scale = "" if args.init_scale == 1.0 else f"_init{args.init_scale:g}"
    name = f"icl_shift_select_m{args.select_m}{scale}" if args.select else args.out
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    if not args.select and name == "icl_shift":
        plot(res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("rows", "select_rows")}))


if __name__ == "__main__":
    main()
