"""The shipped in-context regression checkpoints reload (sha256, ``weights_only=True``) and still beat
the baselines on fresh seeded prompts."""

from __future__ import annotations

import pytest
import torch

import zoo
from data_modules.icl_tasks import sample_prompts
from zoo.core.errors import ShapeError
from zoo.icl.baselines import averaging, knn, least_squares

pytestmark = pytest.mark.usefixtures("one_thread")


def errors(pred: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return ((pred - ys) ** 2).mean(0)  # unit target variance: nmse per position


@pytest.mark.parametrize("name, d", [("icl-linear-d5", 5), ("icl-linear-d10", 10)])
def test_linear_checkpoint_beats_zero_and_averaging(name, d):
    model = zoo.load_pretrained(name)
    n = model.hparams.n_positions
    assert model.hparams.n_dims == d
    xs, ys, _ = sample_prompts("linear", 400, n, d, torch.Generator().manual_seed(777))
    with torch.no_grad():
        ours = errors(model(xs, ys), ys)
    zero, avg = errors(torch.zeros_like(ys), ys), errors(averaging(xs, ys), ys)
    assert ours[d:].mean() < 0.6 * zero[d:].mean()
    assert torch.all(ours[1:] < avg[1:])
    with pytest.raises(ShapeError, match=f"n_positions={n}"):
        model(torch.randn(1, n + 1, d), torch.randn(1, n + 1))


@pytest.mark.parametrize("name, depth", [("icl-relu3-d5", 3), ("icl-relu4-d5", 4), ("icl-relu6-d5", 6),
                                         ("icl-encoder-relu3-d5", 3)])
def test_relu_checkpoint_beats_zero_knn_and_least_squares(name, depth):
    model = zoo.load_pretrained(name)
    d, n = model.hparams.n_dims, model.hparams.n_positions
    xs, ys, _ = sample_prompts("relu_net", 500, n, d, torch.Generator().manual_seed(777), depth=depth, hidden=32)
    with torch.no_grad():
        ours = errors(model(xs, ys), ys)
    late = slice(n // 2, n)
    assert ours[late].mean() < 0.8 * errors(torch.zeros_like(ys), ys)[late].mean()
    assert ours[late].mean() < errors(knn(xs, ys), ys)[late].mean()
    assert ours[late].mean() < errors(least_squares(xs.double(), ys.double()).float(), ys)[late].mean()
    with pytest.raises(ShapeError, match="n_dims=5"):
        model(torch.randn(1, 4, d + 1), torch.randn(1, 4))
