"""Training-step cost of ``python -m zoo fit`` against a hand-written torch loop.

Same model (the config's ImageClassifier), same DataLoader (the config's DataModule), same
optimizer and schedule, same number of threads, same process: the runs alternate ``--repeats``
times, so machine noise hits all alike. A bare Lightning ``Trainer`` on the same model shows the
floor that Lightning itself sets. ``ZooCLI(args=[...])`` is exactly what
``python -m zoo fit`` runs. A step's cost is the wall time between the ends of two consecutive
training steps of one epoch (data fetch, forward, backward, optimizer, logging, progress bar),
after a first warm-up epoch. Start-up (process launch to the end of the first step) is measured
apart, in fresh processes.

    python benchmarks/core/cli_overhead.py [--config configs/ndlinear/digits_cnn.yaml] [--threads 2] [--repeats 5]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import Callback, Trainer

import data_modules
from zoo.core.lightning_cli import TRAINER_DEFAULTS, ZooCLI
from zoo.core.registry import model_class

ROOT = Path(__file__).resolve().parents[2]


class StepTimer(Callback):
    """The time at the end of every training step, per epoch."""

    def __init__(self) -> None:
        self.epochs: list[list[float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.epochs[-1].append(time.perf_counter())


def zoo_steps(config: str, epochs: int, max_steps: int = -1) -> list[list[float]]:
    timer = StepTimer()
    defaults = list(TRAINER_DEFAULTS["callbacks"])
    TRAINER_DEFAULTS["callbacks"] = [*defaults, timer]
    try:
        with tempfile.TemporaryDirectory() as root:
            ZooCLI(args=["fit", "--config", config, f"--trainer.max_epochs={epochs}",
                         f"--trainer.max_steps={max_steps}", f"--trainer.default_root_dir={root}"])
    finally:
        TRAINER_DEFAULTS["callbacks"] = defaults
    return timer.epochs


def build(config: str):
    """The config's model and DataModule, built directly from the YAML (short class names)."""
    cfg = yaml.safe_load(Path(config).read_text())
    torch.manual_seed(cfg.get("seed_everything", 0))
    model = model_class(cfg["model"]["class_path"])(**cfg["model"]["init_args"])
    data = getattr(data_modules, cfg["data"]["class_path"])(**cfg["data"]["init_args"])
    return model, data


def lightning_steps(config: str, epochs: int, max_steps: int = -1) -> list[list[float]]:
    """The floor Lightning sets: a bare ``Trainer`` (no logger, progress bar, checkpoint or summary)."""
    model, data = build(config)
    timer = StepTimer()
    trainer = Trainer(max_epochs=epochs, max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[timer], accelerator="cpu", devices=1)
    trainer.fit(model, data)
    return timer.epochs


def plain_steps(config: str, epochs: int, max_steps: int = -1) -> list[list[float]]:
    model, data = build(config)
    data.setup("fit")
    loader = data.train_dataloader()
    hp = model.hparams
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    model.train()
    stamps: list[list[float]] = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        stamps.append([])
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            stamps[-1].append(time.perf_counter())
            if len(stamps[-1]) == max_steps:
                return stamps
    return stamps


def step_time(stamps: list[list[float]]) -> float:
    """Median seconds between consecutive step ends within an epoch, first epoch excluded."""
    return statistics.median(b - a for epoch in stamps[1:] for a, b in zip(epoch, epoch[1:]))


def startup(kind: str, config: str, threads: int) -> float:
    """Seconds from launching a fresh process to the end of its first training step."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    code = (f"import sys, json, time; sys.path.insert(0, {str(ROOT / 'benchmarks' / 'core')!r}); "
            f"import cli_overhead as b; t = b.{kind}_steps({config!r}, 1, 1); "
            f"open({out!r}, 'w').write(json.dumps(t[0][0]))")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    launched = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_step = json.loads(Path(out).read_text())
    os.unlink(out)
    return first_step - launched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ndlinear/digits_cnn.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    kinds = {"plain": plain_steps, "lightning": lightning_steps, "zoo": zoo_steps}
    steps: dict[str, list[float]] = {kind: [] for kind in kinds}
    ratios = []
    for _ in range(args.repeats):
        for kind, run in kinds.items():
            steps[kind].append(step_time(run(args.config, args.epochs)))
        ratios.append(steps["zoo"][-1] / steps["plain"][-1])
    step = {kind: statistics.median(values) for kind, values in steps.items()}
    start = {kind: startup(kind, args.config, args.threads) for kind in ("plain", "zoo")}
    ratio = statistics.median(ratios)
    lightning_ratio = statistics.median(l / p for l, p in zip(steps["lightning"], steps["plain"]))
    print(f"{'':22}{'step (ms)':>12}{'start-up (s)':>14}")
    for kind, label in (("plain", "hand-written loop"), ("lightning", "bare Lightning"), ("zoo", "python -m zoo fit")):
        startup_s = f"{start[kind]:14.2f}" if kind in start else f"{'':>14}"
        print(f"{label:22}{step[kind] * 1e3:12.3f}{startup_s}")
    print(f"{'ratio bare / plain':22}{lightning_ratio:12.3f}")
    print(f"{'ratio zoo / plain':22}{ratio:12.3f}   (median of {args.repeats} alternating rounds: "
          f"{', '.join(f'{r:.3f}' for r in ratios)})")
    print(json.dumps({
        "benchmark": "cli_overhead", "config": args.config, "threads": args.threads,
        "epochs": args.epochs, "repeats": args.repeats,
        "step_ms": {k: round(v * 1e3, 4) for k, v in step.items()},
        "ratios": [round(r, 4) for r in ratios],
        "startup_s": {k: round(v, 3) for k, v in start.items()}, "ratio": round(ratio, 4), "lightning_ratio": round(lightning_ratio, 4),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
    }))


if __name__ == "__main__":
    main()
