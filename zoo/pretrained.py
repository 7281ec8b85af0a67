"""Registry of the checkpoints this project trained and ships, driven by ``checkpoints/manifest.json``.

>>> import zoo
>>> zoo.list_pretrained()
['digits-cnn']
>>> model = zoo.load_pretrained("digits-cnn")      # sha256 checked, weights_only=True, eval mode

Each manifest entry names the file, its sha256, the LightningModule class, the config and the
command that rebuilt it, the data and the metrics it reached. Rebuild or add one with

    python -m zoo register NAME --config configs/<paper>/<exp>.yaml [--trainer.max_epochs N ...]

which fits the config, tests the best checkpoint, strips it to what loading needs and records it.
The folder defaults to the repository's ``checkpoints/``; set ``ZOO_CHECKPOINTS`` to use another.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import os
import shlex
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from zoo.errors import CheckpointError, UnknownPretrainedError

#: Keys a stripped checkpoint keeps: enough for ``load_from_checkpoint`` and ``--ckpt_path``.
KEEP_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version")


def checkpoint_dir() -> Path:
    return Path(os.environ.get("ZOO_CHECKPOINTS", Path(__file__).resolve().parent.parent / "checkpoints"))


def read_manifest(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    path = (folder or checkpoint_dir()) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_pretrained() -> list[str]:
    """Names of the shipped checkpoints, sorted."""
    return sorted(read_manifest())


def pretrained_info(name: str) -> dict[str, Any]:
    """The manifest entry of ``name`` (file, sha256, class, config, command, data, metrics)."""
    manifest = read_manifest()
    if name not in manifest:
        available = ", ".join(sorted(manifest)) or "none"
        raise UnknownPretrainedError(f"unknown pretrained name {name!r}; available: {available}")
    return manifest[name]


def checkpoint_path(spec: str | Path) -> Path:
    """The file of a registered name (``zoo.list_pretrained()``), or ``spec`` itself as a path."""
    manifest = read_manifest()
    return checkpoint_dir() / manifest[str(spec)]["file"] if str(spec) in manifest else Path(spec)


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely and check it is one; the sha256 too if the manifest lists it.

    Raises ``CheckpointError`` for a missing file, a file that is not a torch zip archive, a
    pickle that needs anything but tensors and plain types (``weights_only=True``), a dict
    without ``state_dict``, or a registered file whose bytes changed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    for entry in read_manifest().values():
        registered = checkpoint_dir() / entry["file"]
        if registered.is_file() and registered.resolve() == path.resolve():
            _check_sha(path, entry["sha256"])
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a zip archive: truncated or corrupt?)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for damaged or unsafe archives
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} cannot be loaded safely (weights_only=True): {reason}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return checkpoint


def _check_sha(path: Path, expected: str) -> None:
    actual = sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"{path}: sha256 {actual[:16]}... does not match the manifest's {expected[:16]}...; "
            "the file is corrupt or was modified"
        )


def _import_class(class_path: str) -> type[LightningModule]:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
        raise CheckpointError(f"manifest class {class_path!r} is not a LightningModule")
    return cls


def load_pretrained(name: str, map_location: str | torch.device = "cpu") -> LightningModule:
    """The shipped model ``name`` in eval mode, after checking the file's sha256."""
    entry = pretrained_info(name)
    path = checkpoint_dir() / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"pretrained {name!r}: file {path} is missing")
    _check_sha(path, entry["sha256"])
    cls = _import_class(entry["class_path"])
    try:
        model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"pretrained {name!r}: {path} failed to load: {err}") from err
    return model.eval()


def strip_checkpoint(source: str | Path, target: str | Path) -> dict[str, Any]:
    """Save only what loading needs (weights and hyperparameters, no optimizer or loop state)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    stripped = {k: checkpoint[k] for k in KEEP_KEYS if k in checkpoint}
    torch.save(stripped, target)
    return stripped


def register(name: str, cli_args: list[str], folder: Path | None = None) -> dict[str, Any]:
    """Fit ``cli_args`` (``--config ...`` and overrides), test the best checkpoint, ship it as ``name``."""
    from zoo.cli import ZooCLI

    folder = folder or checkpoint_dir()
    cli = ZooCLI(args=["fit", *cli_args])
    callback = cli.trainer.checkpoint_callback
    best = (callback.best_model_path or callback.last_model_path) if callback is not None else ""
    if not best:
        raise CheckpointError(f"register {name!r}: the fit wrote no checkpoint (is checkpointing disabled?)")
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, weights_only=True)
    metrics = {k: round(float(v), 6) for k, v in (results[0] if results else {}).items()}

    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f"{name}.tmp"
    stripped = strip_checkpoint(best, staged)
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
        "class_path": f"{type(model).__module__}.{type(model).__qualname__}",
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


def register_main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m zoo register",
        description="Fit a config, test its best checkpoint and add it to checkpoints/manifest.json.",
    )
    parser.add_argument("name", help="registry name, e.g. digits-cnn")
    parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="--config FILE ... and any fit overrides")
    parsed = parser.parse_args(args)
    if not parsed.cli_args:
        parser.error("give at least one --config")
    entry = register(parsed.name, parsed.cli_args)
    print(f"registered {parsed.name}: {entry['file']} sha256={entry['sha256'][:16]}... metrics={entry['metrics']}")
