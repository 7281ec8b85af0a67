"""Shared fixtures: run the real CLI in-process or as ``python -m zoo``, never touching the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
DIGITS = "configs/ndlinear/digits_cnn.yaml"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    """Configs are given relative to the repository root, as in the README."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["zoo"])


@pytest.fixture
def one_thread():
    """One torch thread for a test of tiny tensors: more threads only add synchronization (and
    stall on a busy 2-core machine). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*args: str) -> "ZooCLI":  # noqa: F821
    """Run ``python -m zoo <args>`` in this process and return the finished ``ZooCLI``."""
    from zoo.core.lightning_cli import ZooCLI

    return ZooCLI(args=list(args))


def run_zoo(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m zoo <args>`` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "zoo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def quick(root: Path, *extra: str) -> list[str]:
    """Arguments for a small, quiet fit of the digits config under ``root``."""
    return [
        "--config", DIGITS,
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]
