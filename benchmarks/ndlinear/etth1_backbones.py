"""NdLinear vs dense inside competitive forecasting backbones on ETTh1 (issue 23): the linear
backbone (DLinear's "Linear", fitted by least squares or AdamW) and a PatchTST-style transformer
with RevIN, at look-back 96 and 336 and horizons 96-720, several seeds for the trained ones.

    python benchmarks/ndlinear/etth1_backbones.py run [--groups lstsq sgd patch encoder]
        [--lookbacks 96 336] [--horizons 96 192 336 720] [--seeds 0 1 2] [--epochs 10] [--threads 1]
    python benchmarks/ndlinear/etth1_backbones.py report

``run`` appends one JSON line per (model, look-back, horizon, seed) to
``docs/ndlinear/etth1_backbones.jsonl`` and skips the ones already there (so runs can be split
across processes and resumed); ``report`` prints the markdown table (mean +- std over seeds), one
JSON line, and draws ``docs/ndlinear/etth1_backbones.png`` (per horizon, the first test window's OT:
look-back, truth and every model's forecast, seed 0). Protocol: the DataModule's standard borders
(12 / 4 / 4 months), scaling fit on the training months, all 7 variables (features M), test
MSE / MAE on the scaled series; trained models are tested at their best-validation epoch.
Needs ``../shared/data/timeseries/ETTh1.csv``.

Groups:

- ``lstsq``: Linear (one 96-or-336 -> H matrix shared by the variables) and NdLinear-Linear (a day
  map x an hour map, ``period`` 24, 10 alternating least-squares rounds), each with and without
  RevIN (mean only), fitted in closed form (deterministic: one seed).
  A seed sets the initialization and the order of the training windows (the DataModule's ``seed``).
- ``sgd``: the same two maps with RevIN trained by AdamW (lr 0.005, batch 32, cosine).
- ``patch``: ``PatchForecaster`` (PatchTST's ETTh1 size: patch 16, stride 8, d 16, 4 heads, ff 128,
  3 layers, dropout 0.3, RevIN) with dense or NdLinear embedding / feed-forward / head, AdamW lr
  1e-3, batch 128.
- ``encoder``: the paper-style ``Forecaster`` (one encoder layer, d 32) with RevIN, dense or
  NdLinear, AdamW lr 1e-3, batch 32.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from data_modules import TimeSeriesDataModule
from zoo.core.plots import save_figure
from zoo.ndlinear import Forecaster, LinearForecaster, PatchForecaster

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "timeseries"
OUT = ROOT / "docs" / "ndlinear"
RESULTS = OUT / "etth1_backbones.jsonl"
CHANNELS = 7
BATCH = {"lstsq": 32, "sgd": 32, "patch": 128, "encoder": 32}


def models(group: str, lookback: int, horizon: int) -> dict[str, callable]:
    shape = {"lookback": lookback, "horizon": horizon}
    linear = {**shape, "channels": CHANNELS}
    if group == "lstsq":
        return {
            "Linear": lambda: LinearForecaster(**linear),
            "Linear + RevIN": lambda: LinearForecaster(**linear, revin=True),
            "NdLinear-Linear": lambda: LinearForecaster(**linear, layer="ndlinear"),
            "NdLinear-Linear + RevIN": lambda: LinearForecaster(**linear, layer="ndlinear", revin=True),
        }
    if group == "sgd":
        return {
            "Linear + RevIN, sgd": lambda: LinearForecaster(**linear, revin=True, solver="sgd"),
            "NdLinear-Linear + RevIN, sgd": lambda: LinearForecaster(**linear, layer="ndlinear", revin=True,
                                                                     solver="sgd"),
        }
    if group == "patch":
        return {f"PatchTST-style, {layer}": (lambda layer=layer: PatchForecaster(**linear, layer=layer))
                for layer in ("dense", "ndlinear")}
    if group == "encoder":
        return {f"encoder + RevIN, {layer}": (lambda layer=layer: Forecaster(
                    **shape, in_features=CHANNELS, out_features=CHANNELS, layer=layer, revin=True))
                for layer in ("dense", "ndlinear")}
    raise SystemExit(f"error: unknown group {group!r}; expected lstsq, sgd, patch or encoder")


class EpochTimer(Callback):
    def on_train_epoch_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.times = [*getattr(self, "times", []), time.perf_counter() - self.start]


def run_one(build, data: TimeSeriesDataModule, epochs: int, seed: int, folder: str) -> dict:
    seed_everything(seed, verbose=False)
    model = build()
    sgd = not isinstance(model, LinearForecaster) or model.trains_by_gradient()
    callbacks = [EpochTimer()]
    if sgd:
        callbacks.append(ModelCheckpoint(dirpath=folder, monitor="val/mse", mode="min", save_top_k=1))
    trainer = Trainer(max_epochs=epochs if sgd else 1, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=callbacks, enable_checkpointing=sgd, default_root_dir=folder)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    result = trainer.test(model, datamodule=data, ckpt_path="best" if sgd else None, verbose=False)[0]
    if sgd:  # the best epoch's weights, for the plot
        model.load_state_dict(torch.load(callbacks[1].best_model_path, weights_only=True)["state_dict"])
    x = data.test_set[0][0]
    with torch.no_grad():
        forecast = model.eval()(x[None])[0, :, -1].tolist()
    return {"mse": result["test/mse"], "mae": result["test/mae"], "params": model.parameter_counts()["params/total"],
            "epochs": trainer.current_epoch, "fit_s": seconds, "epoch_s": statistics.median(callbacks[0].times),
            "forecast_ot": forecast if seed == 0 else None}


def load_rows() -> list[dict]:
    if not RESULTS.is_file():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def run(args) -> None:
    torch.set_num_threads(args.threads)
    done = {(r["model"], r["lookback"], r["horizon"], r["seed"]) for r in load_rows()}
    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
               "torch": torch.__version__}
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for lookback in args.lookbacks:
            for horizon in args.horizons:
                for group in args.groups:
                    seeds = [0] if group == "lstsq" else args.seeds
                    for name, build in models(group, lookback, horizon).items():
                        for seed in seeds:
                            if (name, lookback, horizon, seed) in done:
                                continue
                            data = TimeSeriesDataModule(  # the seed also sets the order of the training windows
                                data_dir=str(DATA), file="ETTh1.csv", features="M", lookback=lookback,
                                horizon=horizon, borders=[8640, 11520, 14400], batch_size=BATCH[group], seed=seed)
                            folder = os.path.join(scratch, f"{group}-{lookback}-{horizon}-{seed}-{len(done)}")
                            row = run_one(build, data, args.epochs, seed, folder)
                            row = {"model": name, "group": group, "lookback": lookback, "horizon": horizon,
                                   "seed": seed, "lr_epochs": args.epochs if group != "lstsq" else None,
                                   **row, **machine}
                            with RESULTS.open("a") as f:
                                f.write(json.dumps(row) + "\n")
                            done.add((name, lookback, horizon, seed))
                            print(f"L={lookback} H={horizon} {name} seed {seed}: MSE {row['mse']:.4f} "
                                  f"MAE {row['mae']:.4f} ({row['fit_s']:.1f} s, {row['epochs']} epochs)", flush=True)


def report(args) -> None:
    rows = load_rows()
    if not rows:
        raise SystemExit(f"error: no results in {RESULTS}; run `... run` first")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["lookback"], r["horizon"], r["model"]), []).append(r)

    def spread(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {statistics.stdev(values):.3f}"

    summary = []
    print("| look-back | horizon | model | params | seeds | test MSE | test MAE | fit (s) | s / epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (lookback, horizon, model), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        mse, mae = [r["mse"] for r in rs], [r["mae"] for r in rs]
        summary.append({"lookback": lookback, "horizon": horizon, "model": model, "params": rs[0]["params"],
                        "seeds": len(rs), "mse": statistics.fmean(mse), "mae": statistics.fmean(mae),
                        "mse_std": statistics.stdev(mse) if len(rs) > 1 else 0.0,
                        "fit_s": statistics.median(r["fit_s"] for r in rs),
                        "epoch_s": statistics.median(r["epoch_s"] for r in rs)})
        per_epoch = "-" if rs[0]["group"] == "lstsq" else f"{summary[-1]['epoch_s']:.1f}"  # lstsq: solved before it
        print(f"| {lookback} | {horizon} | {model} | {rs[0]['params']:,} | {len(rs)} | {spread(mse)} | "
              f"{spread(mae)} | {summary[-1]['fit_s']:.1f} | {per_epoch} |")
    print(json.dumps({"benchmark": "ndlinear/etth1_backbones", "rows": summary}))
    (OUT / "etth1_backbones.json").write_text(json.dumps({"benchmark": "ndlinear/etth1_backbones",
                                                          "rows": summary}, indent=1) + "\n")
    print(f"wrote {plot(rows, OUT / 'etth1_backbones.png')}")


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["lookback"], r["horizon"]) for r in rows if r["forecast_ot"] is not None})
    fig, axes = plt.subplots(len(keys), 1, figsize=(11, 2.6 * len(keys)), squeeze=False)
    for ax, (lookback, horizon) in zip(axes[:, 0], keys):
        data = TimeSeriesDataModule(data_dir=str(DATA), file="ETTh1.csv", features="M", lookback=lookback,
                                    horizon=horizon, borders=[8640, 11520, 14400])
        data.setup("test")
        x, y = data.test_set[0]
        ax.plot(range(-lookback, 0), x[:, -1], color="0.4", lw=1, label="look-back")
        ax.plot(range(horizon), y[:, -1], color="black", lw=1.4, label="truth")
        for r in rows:
            if (r["lookback"], r["horizon"]) == (lookback, horizon) and r["forecast_ot"] is not None:
                ax.plot(range(horizon), r["forecast_ot"], lw=1, label=r["model"])
        ax.axvline(-0.5, color="0.7", lw=0.8, ls="--")
        ax.set_title(f"ETTh1 OT (scaled), first test window, look-back {lookback}, horizon {horizon}", fontsize=9)
    axes[0, 0].legend(fontsize=6, ncol=4)
    axes[-1, 0].set_xlabel("hours from the forecast start")
    return save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--groups", nargs="+", default=["lstsq", "sgd", "patch"])
    parser.add_argument("--lookbacks", type=int, nargs="+", default=[96, 336])
    parser.add_argument("--horizons", type=int, nargs="+", default=[96, 192, 336, 720])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not (DATA / "ETTh1.csv").is_file():
        raise SystemExit(f"error: needs {DATA / 'ETTh1.csv'} (../shared/data is absent)")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*(does not have many workers|smaller than the logging interval|"
                                      "returned `None`|exists and is not empty).*")
    (run if args.command == "run" else report)(args)


if __name__ == "__main__":
    main()
