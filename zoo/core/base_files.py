"""Small files that only make sense on top of one base model (LoRA adapters, soft prompts): a
``torch.save``d dict with a format tag, a version and the base's registry name and sha256.
Plain torch: reading one never runs code (``weights_only=True``), and a file for another base
(another sha256) is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zoo.core.errors import CheckpointError, ConfigError


def save_base_file(path: str | Path, kind: str, format: str, version: int, base_name: str, base_sha256: str,
                   **fields) -> None:
    """Write ``fields`` with the format tag, version and base identity; ``kind`` names the file
    in error messages (``"adapter"``, ``"prompt file"``)."""
    for label, value in (("base_name", base_name), ("base_sha256", base_sha256)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{kind} {label} must be a non-empty str, got {value!r}")
    torch.save({"format": format, "version": version, "base_name": base_name, "base_sha256": base_sha256,
                **fields}, path)


def load_base_file(path: str | Path, kind: str, what: str, format: str, version: int, base_sha256: str,
                   verb: str = "made") -> dict:
    """The dict of a :func:`save_base_file` file after checking that it exists, loads with
    ``weights_only=True``, carries ``format`` and ``version``, and was ``verb`` (trained, tuned)
    on the base whose file hashes to ``base_sha256``. ``what`` names the format in messages
    (``"LoRA adapter file"``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{kind} {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{str(path)!r} is not a {what} ({type(error).__name__})") from error
    if not isinstance(payload, dict) or payload.get("format") != format:
        raise CheckpointError(f"{str(path)!r} is not a {what} (no format {format!r})")
    if payload.get("version") != version:
        raise CheckpointError(f"{kind} {str(path)!r} has version {payload.get('version')!r}, expected {version}")
    if payload.get("base_sha256") != base_sha256:
        raise CheckpointError(f"{kind} {str(path)!r} was {verb} on base {payload.get('base_name')!r} "
                              f"(sha256 {payload.get('base_sha256')}), not on this base (sha256 {base_sha256})")
    return payload
