"""ImageClassifier: shapes and parameter counts by formula, shape errors, and that it learns."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import quick, run_cli
from zoo.core.errors import ConfigError, ShapeError
from zoo.ndlinear import ImageClassifier


def conv_block_params(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9 + 2 * c_out  # 3x3 conv without bias + BatchNorm scale and shift


@pytest.mark.parametrize("head", ["linear", "mlp", "ndlinear"])
def test_shapes_and_parameter_count(head):
    """The NdLinear paper's CIFAR CNN: 64,858 parameters with the NdLinear head, 1,070,986 with the
    dense one; our convolutions have no bias (BatchNorm follows), 96 fewer."""
    model = ImageClassifier(in_channels=3, image_size=32, num_classes=10, channels=(32, 64), head=head, hidden=256)
    logits = model(torch.randn(5, 3, 32, 32))
    assert logits.shape == (5, 10)
    features = 64 * 8 * 8
    head_params = {
        "linear": features * 10 + 10,
        "mlp": features * 256 + 256 + 256 * 10 + 10,
        "ndlinear": (64 * 64 + 64) + 2 * (8 * 8 + 8) + features * 10 + 10,
    }[head]
    expected = conv_block_params(3, 32) + conv_block_params(32, 64) + head_params
    assert model.parameter_counts()["params/total"] == expected
    paper = {"mlp": 1_070_986, "ndlinear": 64_858}
    if head in paper:
        assert expected == paper[head] - 96


def test_wrong_input_shape_names_expected_and_actual():
    model = ImageClassifier(in_channels=1, image_size=8)
    with pytest.raises(ShapeError, match=r"images must have shape \[\*, 1, 8, 8\], got \[2, 3, 8, 8\]"):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(ShapeError, match=r"got \[8, 8\]"):
        model(torch.randn(8, 8))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="head must be one of"):
        ImageClassifier(head="ndlinear?")
    with pytest.raises(ConfigError, match="halve image_size=8 to 0"):
        ImageClassifier(image_size=8, channels=(8, 8, 8, 8))


def test_learns_digits_in_three_epochs(tmp_path):
    """The claim at tiny scale: from chance (10%) to >= 95% held-out accuracy in 3 epochs."""
    cli = run_cli("fit", *quick(tmp_path, "--trainer.max_epochs=3"))
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert results[0]["test/acc"] >= 0.95
    assert results[0]["test/loss"] < 0.3
