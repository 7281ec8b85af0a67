"""``python -m zoo seeds`` — fit and test one config under several seeds; mean +/- std of the test metrics.

    python -m zoo seeds --seeds 0 1 2 -- --config configs/ndlinear/digits_ndlinear.yaml [overrides ...]

Each seed runs ``fit`` (``--seed_everything <seed>``, run folder ``<default_root_dir>/seed<seed>``)
then ``test`` on the best checkpoint (the last one without a monitored metric). Prints a table and
one JSON line, and writes it to ``<default_root_dir>/seeds.json``. The data split stays the
config's, so every seed is tested on the same examples.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from zoo.core.errors import ConfigError


def run_seeds(seeds: list[int], cli_args: list[str]) -> dict:
    from zoo.core.lightning_cli import ZooCLI

    if len(seeds) < 2:
        raise ConfigError(f"give at least two seeds to get a spread, got {seeds}")
    root = Path(ZooCLI(args=cli_args, run=False).trainer.default_root_dir)
    per_seed = []
    for seed in seeds:
        cli = ZooCLI(args=["fit", *cli_args, f"--seed_everything={seed}", f"--trainer.default_root_dir={root / f'seed{seed}'}"])
        callback = cli.trainer.checkpoint_callback
        best = (callback.best_model_path or callback.last_model_path) if callback is not None else None
        results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, weights_only=True,
                                   verbose=False)
        metrics = {k: float(v) for k, v in results[0].items()}
        per_seed.append({"seed": seed, "params": sum(p.numel() for p in cli.model.parameters()), **metrics})
    names = [k for k in per_seed[0] if k not in ("seed", "params")]
    summary = {
        "args": cli_args,
        "seeds": seeds,
        "params": per_seed[0]["params"],
        "mean": {k: statistics.mean(r[k] for r in per_seed) for k in names},
        "std": {k: statistics.stdev(r[k] for r in per_seed) for k in names},
        "runs": per_seed,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo seeds", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- --config FILE ... (fit arguments)")
    parsed = parser.parse_args(args)
    cli_args = parsed.cli_args[1:] if parsed.cli_args[:1] == ["--"] else parsed.cli_args
    if not cli_args:
        parser.error("give the fit arguments after --, e.g. -- --config configs/<paper>/<exp>.yaml")
    summary = run_seeds(parsed.seeds, cli_args)
    print(f"\n{' '.join(cli_args)}  ({summary['params']:,} parameters, seeds {summary['seeds']})")
    for name in summary["mean"]:
        print(f"  {name:20} {summary['mean'][name]:.4f} +/- {summary['std'][name]:.4f}")
    print(json.dumps(summary))
