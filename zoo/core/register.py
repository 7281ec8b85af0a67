"""``python -m zoo register NAME --config ...``: fit a config, test its best checkpoint, strip it to
what loading needs and add it to the registry (``checkpoints/manifest.json``, ``zoo.core.registry``).

    python -m zoo register digits-cnn --config configs/ndlinear/digits_cnn.yaml [--trainer.max_epochs N ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import torch

from zoo.core.errors import CheckpointError, ConfigError, NonFiniteError
from zoo.core.registry import checkpoint_dir, read_manifest, sha256

#: A registry name: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit.
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")

#: Keys a stripped checkpoint keeps: enough for ``load_from_checkpoint`` and ``--ckpt_path``.
KEEP_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version")


def strip_checkpoint(source: str | Path, target: str | Path) -> dict[str, Any]:
    """Save only what loading needs (weights and hyperparameters, no optimizer or loop state)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    stripped = {k: checkpoint[k] for k in KEEP_KEYS if k in checkpoint}
    torch.save(stripped, target)
    return stripped


def register(name: str, cli_args: list[str], folder: Path | None = None) -> dict[str, Any]:
    """Fit ``cli_args`` (``--config ...`` and overrides), test the best checkpoint, ship it as ``name``.
    A model or a test metric that is NaN or infinite is refused (nothing is written)."""
    from zoo.core.lightning_cli import ZooCLI

    if not NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"registry name {name!r} must be lower-case letters, digits, '.', '_' or '-' "
                          "(e.g. digits-cnn), starting with a letter or digit")
    folder = folder or checkpoint_dir()
    cli = ZooCLI(args=["fit", *cli_args])
    callback = cli.trainer.checkpoint_callback
    best = (callback.best_model_path or callback.last_model_path) if callback is not None else ""
    if not best:
        raise CheckpointError(f"register {name!r}: the fit wrote no checkpoint (is checkpointing disabled?)")
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, weights_only=True)
    metrics = {k: round(float(v), 6) for k, v in (results[0] if results else {}).items()}
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"register {name!r}: test metrics {', '.join(f'{k}={metrics[k]}' for k in bad)} are "
                             f"not finite; nothing was registered")

    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f"{name}.tmp"
    stripped = strip_checkpoint(best, staged)
    broken = [k for k, v in stripped["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        staged.unlink()
        raise NonFiniteError(f"register {name!r}: {best} holds NaN/inf weights ({', '.join(broken[:3])}"
                             f"{', ...' if len(broken) > 3 else ''}); nothing was registered")
    digest = sha256(staged)
    target = folder / f"{name}-{digest[:8]}.ckpt"
    manifest = read_manifest(folder)
    old = manifest.get(name, {}).get("file")
    if old and old != target.name and (folder / old).is_file():
        (folder / old).unlink()
    staged.replace(target)
    model = cli.model
    manifest[name] = {
        "file": target.name,
        "sha256": digest,
        "class": type(model).__name__,
        "configs": [cli_args[i + 1] for i, a in enumerate(cli_args[:-1]) if a in ("--config", "-c")],
        "command": shlex.join(["python", "-m", "zoo", "register", name, *cli_args]),
        "data": type(cli.datamodule).__name__ if cli.datamodule is not None else None,
        "metrics": metrics,
        "params": sum(p.numel() for p in model.parameters()),
        "size_bytes": target.stat().st_size,
        "lightning": stripped.get("pytorch-lightning_version"),
        "torch": torch.__version__.split("+")[0],
        "created": datetime.date.today().isoformat(),
    }
    (folder / "manifest.json").write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return manifest[name]


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo register", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="registry name, e.g. digits-cnn")
    parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="--config FILE ... and any fit overrides")
    parsed = parser.parse_args(args)
    if not parsed.cli_args:
        parser.error("give at least one --config")
    entry = register(parsed.name, parsed.cli_args)
    print(f"registered {parsed.name}: {entry['file']} sha256={entry['sha256'][:16]}... metrics={entry['metrics']}")
