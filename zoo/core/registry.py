"""The registry: which LightningModules the zoo has, and the checkpoints it trained and ships
(``checkpoints/manifest.json``). Pure lookups: list, verify, load; training a checkpoint is the
``register`` command (``zoo.core.register``).

>>> import zoo
>>> zoo.list_pretrained()[:3]
['alignab-lm-oas', 'digits-ae', 'digits-cnn']
>>> model = zoo.load_pretrained("digits-cnn")      # sha256 checked, weights_only=True, eval mode

Each manifest entry names the file, its sha256, the LightningModule class (by name, resolved
through :func:`model_class`, so a class may move between modules without breaking its
checkpoints), the config and command that rebuilt it, the data and the metrics it reached. The
folder defaults to the repository's ``checkpoints/``; set ``ZOO_CHECKPOINTS`` to use another.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from zoo.core.errors import CheckpointError, UnknownPretrainedError

#: The paper packages with LightningModules (``zoo.<paper>``, each listing them in ``__all__``).
PAPERS = ("ndlinear", "hopfield", "dit", "icl", "alignab", "lora", "prompt_tuning", "deal")


def model_classes() -> dict[str, type]:
    """Every LightningModule the zoo offers, by class name (imports the paper packages)."""
    from lightning.pytorch import LightningModule

    found = {}
    for paper in PAPERS:
        package = importlib.import_module(f"zoo.{paper}")
        for name in package.__all__:
            obj = getattr(package, name)
            if isinstance(obj, type) and issubclass(obj, LightningModule) and not inspect.isabstract(obj):
                found[name] = obj
    return found


def model_class(name: str) -> type:
    """The LightningModule called ``name``; a dotted path (``zoo.models.ConditionalDiT``, as older
    checkpoints record it) is resolved by its last part."""
    classes = model_classes()
    short = name.rpartition(".")[2]
    if short not in classes:
        raise CheckpointError(f"unknown model class {name!r}; the zoo has {', '.join(sorted(classes))}")
    return classes[short]


def checkpoint_dir() -> Path:
    return Path(os.environ.get("ZOO_CHECKPOINTS", Path(__file__).resolve().parents[2] / "checkpoints"))


def read_manifest(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """The manifest ``{name: entry}`` of ``folder`` (default :func:`checkpoint_dir`); ``{}`` without one.

    Raises ``CheckpointError`` naming the file (and the entry) for a file that cannot be read, is not
    UTF-8 JSON, or is JSON of another shape (:func:`_check_manifest`).
    """
    path = (folder or checkpoint_dir()) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_bytes())
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the manifest ({err.strerror or err})") from err
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit integer
        reason = str(err) if not isinstance(err, RecursionError) else "nested too deeply"
        raise CheckpointError(f"{path}: not valid JSON ({reason})") from err
    _check_manifest(path, manifest)
    return manifest


#: the digits of a sha256 as ``hashlib`` writes it (``_check_sha`` compares strings)
_SHA256_DIGITS = frozenset("0123456789abcdef")


def _check_manifest(path: Path, manifest: Any) -> None:
    """A manifest is a JSON object of entries, each an object with ``file`` (a relative path under the
    checkpoints folder), ``sha256`` (64 lowercase hex digits), ``class`` (a class name) and, if present,
    ``metrics`` (an object of numbers); anything else raises ``CheckpointError`` naming the entry."""
    if not isinstance(manifest, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object of entries {{name: {{file, sha256, class, ...}}}}, "
            f"got a JSON {type(manifest).__name__}")
    for name, entry in manifest.items():
        where = f"{path}: entry {name!r}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where}: expected an object with file, sha256 and class, got {type(entry).__name__}")
        missing = [key for key in ("file", "sha256", "class") if key not in entry]
        if missing:
            raise CheckpointError(f"{where}: missing {', '.join(missing)} (every entry needs file, sha256 and class)")
        file, digest, cls = entry["file"], entry["sha256"], entry["class"]
        if (not isinstance(file, str) or not file.strip() or "\0" in file or Path(file).is_absolute()
                or ".." in Path(file).parts or not Path(file).name):
            raise CheckpointError(f"{where}: 'file' must be a file name under the checkpoints folder, got {file!r}")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _SHA256_DIGITS:
            raise CheckpointError(f"{where}: 'sha256' must be 64 lowercase hex digits, got {str(digest)[:80]!r}")
        if not isinstance(cls, str) or not cls.strip():
            raise CheckpointError(f"{where}: 'class' must be a model class name, got {cls!r}")
        metrics = entry.get("metrics", {})
        if not isinstance(metrics, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
            raise CheckpointError(f"{where}: 'metrics' must be an object of numbers, got {str(metrics)[:80]}")


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


def checkpoint_class(checkpoint: dict[str, Any]) -> str | None:
    """The class name a checkpoint's hyperparameters record (``None`` if it records none)."""
    recorded = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    return recorded.rpartition(".")[2] if isinstance(recorded, str) else None


def model_hparams(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments a checkpoint records, without Lightning's bookkeeping keys."""
    return {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}


def build_from_checkpoint(checkpoint: dict[str, Any], cls: type | None = None, source: str = "checkpoint"):
    """The model a verified checkpoint holds: ``cls`` (default: the class it records, resolved by
    name) rebuilt from its hyperparameters, then its weights loaded (strictly)."""
    cls = cls or model_class(checkpoint_class(checkpoint) or "")
    parameters = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in model_hparams(checkpoint).items() if takes_any or k in parameters}
    # LightningCLI hands the module it instantiates its config through a context variable that every
    # save_hyperparameters() in that __init__ reads; a model built from a checkpoint inside such an __init__
    # (a frozen base, a model to align) must record its own arguments, not its parent's
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    token = _given_hyperparameters.set(None)
    try:
        model = cls(**kwargs)
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as err:
        raise CheckpointError(f"{source} does not load into {cls.__name__}: {str(err).splitlines()[0]}") from err
    finally:
        _given_hyperparameters.reset(token)
    return model


def load_pretrained(name: str, map_location: str | torch.device = "cpu"):
    """The shipped model ``name`` in eval mode, after checking the file's sha256."""
    entry = pretrained_info(name)
    path = checkpoint_dir() / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"pretrained {name!r}: file {path} is missing")
    checkpoint = verify_checkpoint(path)
    model = build_from_checkpoint(checkpoint, model_class(entry["class"]), f"pretrained {name!r} ({path})")
    return model.to(map_location).eval()


def main(args: list[str]) -> None:
    """``python -m zoo pretrained [NAME]``: the shipped checkpoints, or one entry in full."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m zoo pretrained", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("name", nargs="?", help="show this entry's whole manifest record")
    parsed = parser.parse_args(args)
    if parsed.name:
        print(json.dumps(pretrained_info(parsed.name), indent=2))
        return
    manifest = read_manifest()
    width = max(map(len, manifest), default=4)
    for name, entry in sorted(manifest.items()):
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(entry.get("metrics", {}).items()) if k.startswith("test/"))
        print(f"{name:<{width}}  {entry['class']:<20}  {metrics}")
