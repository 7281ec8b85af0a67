"""The forecasting baselines of issue 23 on ETTh1: test MSE / MAE on the scaled series at look-back
96 and horizons 96, 192, 336, 720 (the DataModule's standard borders, training-month scaling, all
7 variables, features M), each model fitted and tested through Lightning as the CLI does.

    python benchmarks/ndlinear/etth1_baselines.py [--threads 1] [--horizons 96 192 336 720]
        [--sgd-epochs 10] [--no-sgd]

Models: repeat-last, seasonal naive (24 h), Linear fitted by least squares (one map shared by the
variables, and one per variable), DLinear by least squares (kernel 25; without ridge it forecasts
exactly what the shared Linear does), and Linear / DLinear trained by AdamW (lr 0.005, batch 32,
cosine, ``--sgd-epochs`` epochs, the best-validation epoch tested). Prints a markdown table and one
JSON line; writes ``docs/ndlinear/etth1_baselines.json`` and ``etth1_baselines.png`` (per horizon,
the first test window's OT: look-back, truth and every model's forecast). Needs
``../shared/data/timeseries/ETTh1.csv``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from data_modules import TimeSeriesDataModule
from zoo.core.plots import save_figure
from zoo.ndlinear import LinearForecaster, RepeatLast, SeasonalNaive

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "timeseries"
OUT = ROOT / "docs" / "ndlinear"
LOOKBACK, CHANNELS = 96, 7


def models(horizon: int, sgd: bool) -> dict[str, callable]:
    shape = {"lookback": LOOKBACK, "horizon": horizon, "channels": CHANNELS}
    table = {
        "repeat last": lambda: RepeatLast(**shape),
        "seasonal naive (24)": lambda: SeasonalNaive(**shape, period=24),
        "Linear, lstsq, shared": lambda: LinearForecaster(**shape),
        "Linear, lstsq, individual": lambda: LinearForecaster(**shape, individual=True),
        "DLinear, lstsq, shared": lambda: LinearForecaster(**shape, decomposition=True),
    }
    if sgd:
        table["Linear, sgd, shared"] = lambda: LinearForecaster(**shape, solver="sgd")
        table["DLinear, sgd, shared"] = lambda: LinearForecaster(**shape, decomposition=True, solver="sgd")
    return table


def run(build, data: TimeSeriesDataModule, epochs: int, folder: str) -> tuple[dict, object]:
    """Fit (timed) and test one model; returns its row and the model."""
    seed_everything(0, verbose=False)
    model = build()
    sgd = model.trains_by_gradient()
    checkpoint = ModelCheckpoint(dirpath=folder, monitor="val/mse", mode="min", save_top_k=1) if sgd else None
    trainer = Trainer(max_epochs=epochs if sgd else 1, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[checkpoint] if sgd else [], enable_checkpointing=sgd, default_root_dir=folder)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    result = trainer.test(model, datamodule=data, ckpt_path="best" if sgd else None, verbose=False)[0]
    row = {"mse": result["test/mse"], "mae": result["test/mae"], "params": model.parameter_counts()["params/total"],
           "epochs": trainer.current_epoch, "fit_s": seconds}
    return row, model


def plot(panels: dict[int, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels)), squeeze=False)
    for ax, (horizon, panel) in zip(axes[:, 0], panels.items()):
        x, y = panel["lookback"], panel["truth"]
        past, future = range(-len(x), 0), range(len(y))
        ax.plot(past, x, color="0.4", lw=1, label="look-back")
        ax.plot(future, y, color="black", lw=1.4, label="truth")
        for name, forecast in panel["forecasts"].items():
            ax.plot(future, forecast, lw=1, label=name)
        ax.axvline(-0.5, color="0.7", lw=0.8, ls="--")
        ax.set_title(f"ETTh1 OT (scaled), first test window, horizon {horizon}", fontsize=9)
        ax.set_xlabel("hours from the forecast start")
    axes[0, 0].legend(fontsize=7, ncol=4)
    return save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--horizons", type=int, nargs="+", default=[96, 192, 336, 720])
    parser.add_argument("--sgd-epochs", type=int, default=10)
    parser.add_argument("--no-sgd", action="store_true")
    args = parser.parse_args()
    if not (DATA / "ETTh1.csv").is_file():
        raise SystemExit(f"error: needs {DATA / 'ETTh1.csv'} (../shared/data is absent)")
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*(does not have many workers|smaller than the logging interval).*")
    rows, panels = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for horizon in args.horizons:
            data = TimeSeriesDataModule(data_dir=str(DATA), file="ETTh1.csv", features="M", lookback=LOOKBACK,
                                        horizon=horizon, borders=[8640, 11520, 14400], batch_size=32)
            data.setup("fit")
            x, y = data.test_set[0]
            panels[horizon] = {"lookback": x[:, -1].tolist(), "truth": y[:, -1].tolist(), "forecasts": {}}
            for name, build in models(horizon, not args.no_sgd).items():
                row, model = run(build, data, args.sgd_epochs, os.path.join(scratch, f"h{horizon}", name))
                rows.append({"horizon": horizon, "model": name, **row})
                with torch.no_grad():
                    panels[horizon]["forecasts"][name] = model.eval()(x[None])[0, :, -1].tolist()
                print(f"h={horizon} {name}: MSE {row['mse']:.4f} MAE {row['mae']:.4f} "
                      f"({row['fit_s']:.1f} s, {row['epochs']} epochs)", flush=True)
    print("\n| horizon | model | params | test MSE | test MAE | fit time (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['horizon']} | {r['model']} | {r['params']:,} | {r['mse']:.3f} | {r['mae']:.3f} | {r['fit_s']:.1f} |")
    machine = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__}
    record = {"benchmark": "ndlinear/etth1_baselines", "lookback": LOOKBACK, "sgd_epochs": args.sgd_epochs,
              **machine, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "etth1_baselines.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {plot(panels, OUT / 'etth1_baselines.png')} and {OUT / 'etth1_baselines.json'}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
