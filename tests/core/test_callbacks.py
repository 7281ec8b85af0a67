"""Callbacks added to every run: RNG state in checkpoints, curves, throttled progress bar."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from zoo.core.callbacks import Curves, ProgressBar, RNGState


def test_rng_state_round_trips_through_a_weights_only_checkpoint():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    callback = RNGState()
    buffer = io.BytesIO()
    torch.save(callback.state_dict(), buffer)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(7), np.random.rand(2), random.random()  # move on, as a crashed run would
    buffer.seek(0)
    callback.load_state_dict(torch.load(buffer, weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_curves_plot_groups_metrics_by_name(tmp_path):
    curves = Curves()
    curves.history = {"train/loss": [(0, 1.0), (1, 0.5)], "val/loss": [(0, 1.2), (1, 0.7)], "val/acc": [(0, 0.5), (1, 0.8)]}
    curves.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    restored = Curves()
    restored.load_state_dict(torch.load(_saved(curves.state_dict()), weights_only=True))
    assert restored.history == curves.history


def _saved(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_progress_bar_redraws_at_most_every_interval(monkeypatch):
    bar = ProgressBar(min_interval=1.0)
    clock = iter([0.0, 0.2, 0.5, 1.1, 1.3, 2.5])
    monkeypatch.setattr("zoo.core.callbacks.time.monotonic", lambda: next(clock))
    assert [bar._should_update(n, 100) for n in range(1, 6)] == [False, False, False, True, False]
    assert bar._should_update(100, 100)  # the last batch always draws
