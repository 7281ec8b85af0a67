"""The PatchTST-style forecaster and RevIN (issue 23): patches and RevIN against slow loops,
RevIN's equivariance (a per-variable affine change of the input changes the forecast the same way)
for every forecaster that uses it, parameter counts, one-line errors, and fit + test through the
real CLI with dense and NdLinear maps."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_cli
from tests.data_modules.test_data_modules import write_ett
from zoo.core.errors import ConfigError
from zoo.ndlinear import Forecaster, LinearForecaster, PatchForecaster
from zoo.ndlinear.forecaster import RevIN

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.mark.parametrize("lookback, patch_len, stride", [(96, 16, 8), (20, 5, 3), (12, 12, 1), (10, 1, 4)])
def test_patches_match_a_slow_loop(lookback, patch_len, stride):
    model = PatchForecaster(lookback=lookback, horizon=4, channels=2, patch_len=patch_len, stride=stride,
                            d_model=4, num_heads=1, ff_dim=4, num_layers=1)
    series = torch.randn(3, lookback, dtype=torch.float64)
    padded = series.tolist()
    for row in padded:
        row.extend([row[-1]] * stride)  # the end repeated `stride` times
    patches = []
    start = 0
    while start + patch_len <= lookback + stride:
        patches.append([row[start:start + patch_len] for row in padded])
        start += stride
    expected = torch.tensor(patches, dtype=torch.float64).permute(1, 0, 2)
    assert model.patches == expected.shape[1] == (lookback - patch_len) // stride + 2
    torch.testing.assert_close(model.patchify(series), expected, rtol=0, atol=0)


def test_revin_against_a_slow_loop_and_its_inverse():
    torch.manual_seed(0)
    x = torch.randn(4, 30, 3, dtype=torch.float64) * 5 + 2
    revin = RevIN(3).double()
    with torch.no_grad():
        revin.gamma.copy_(torch.tensor([0.5, 2.0, -1.5]))
        revin.beta.copy_(torch.tensor([0.1, -0.3, 1.0]))
    normalized, stats = revin.normalize(x)
    for b in range(4):
        for c in range(3):
            values = x[b, :, c].tolist()
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / len(values) + revin.eps) ** 0.5
            expected = [(v - mean) / std * revin.gamma[c].item() + revin.beta[c].item() for v in values]
            torch.testing.assert_close(normalized[b, :, c], torch.tensor(expected, dtype=torch.float64))
    # the inverse divides by gamma + eps^2 (as the RevIN reference does): exact to ~eps^2 / gamma
    torch.testing.assert_close(revin.denormalize(normalized, stats), x, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("make", [
    lambda: PatchForecaster(lookback=48, horizon=24, channels=3, d_model=8, num_heads=2, ff_dim=8, num_layers=1),
    lambda: PatchForecaster(lookback=48, horizon=24, channels=3, d_model=8, num_heads=2, ff_dim=8, num_layers=1,
                            layer="ndlinear"),
    lambda: Forecaster(lookback=48, horizon=24, in_features=3, out_features=3, d_model=8, num_heads=2, ff_dim=8,
                       revin=True),
    lambda: LinearForecaster(lookback=48, horizon=24, channels=3, layer="ndlinear", revin=True),
], ids=["patch-dense", "patch-ndlinear", "encoder", "ndlinear-linear"])
def test_revin_makes_the_forecast_follow_a_shift_and_scale_of_each_variable(make):
    """With RevIN, ``f(a x + b) = a f(x) + b`` per variable (a > 0): the model only sees the
    normalized window (the mean-only RevIN of the linear backbone: for shifts)."""
    torch.manual_seed(0)
    model = make().double().eval()
    x = torch.randn(5, 48, 3, dtype=torch.float64)
    scale = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    if isinstance(model, LinearForecaster):
        scale = torch.ones(3, dtype=torch.float64)
    shift = torch.tensor([10.0, -4.0, 0.5], dtype=torch.float64)
    with torch.no_grad():
        # exact but for RevIN's eps inside the square root (relative 1e-5 of a unit variance)
        torch.testing.assert_close(model(x * scale + shift), model(x) * scale + shift, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(model(x * 3.0), model(x), atol=1e-2)  # the forecast does move


def test_parameter_counts_ndlinear_vs_dense():
    shape = {"lookback": 96, "horizon": 96, "channels": 7, "d_model": 16, "num_heads": 4, "ff_dim": 128, "num_layers": 3}
    dense = PatchForecaster(**shape).parameter_counts()["params/total"]
    nd = PatchForecaster(**shape, layer="ndlinear").parameter_counts()["params/total"]
    patches, d = 12, 16
    head_dense, head_nd = patches * d * 96 + 96, (4 * patches + 4) + (24 * d + 24)
    embed_dense, embed_nd = 16 * d + d, (patches * patches + patches) + (d * 16 + d)
    assert dense - nd == (head_dense - head_nd) + (embed_dense - embed_nd) + 3 * (
        (d * 128 + 128 + 128 * d + d) - (2 * (patches * patches + patches) + d * 128 + 128 + 128 * d + d))
    assert dense == 35214 and nd < dense


@pytest.mark.parametrize("make, match", [
    (lambda: PatchForecaster(lookback=10, patch_len=16), "patch_len must be between 1 and lookback=10, got 16"),
    (lambda: PatchForecaster(stride=0), "stride must be >= 1, got 0"),
    (lambda: PatchForecaster(d_model=10, num_heads=4), "d_model=10 must be divisible by num_heads=4"),
    (lambda: PatchForecaster(horizon=100, layer="ndlinear"), "horizon=100 must be a multiple of period=24"),
    (lambda: PatchForecaster(layer="mlp"), "layer must be one of .*got 'mlp'"),
    (lambda: Forecaster(in_features=7, out_features=1, revin=True), "in_features=7 must equal out_features=1"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize("layer", [pytest.param("dense", marks=pytest.mark.slow), "ndlinear"])  # slow: suite budget
def test_fit_and_test_through_the_cli(tmp_path, layer):
    write_ett(tmp_path / "ett.csv", rows=400, columns=4)
    args = ["--model=PatchForecaster", "--model.lookback=48", "--model.horizon=24", "--model.channels=4",
            "--model.d_model=8", "--model.num_heads=2", "--model.ff_dim=16", "--model.num_layers=1",
            f"--model.layer={layer}", "--model.lr=0.01", "--data=TimeSeriesDataModule", f"--data.data_dir={tmp_path}",
            "--data.file=ett.csv", "--data.lookback=48", "--data.horizon=24", "--data.batch_size=16",
            "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path / layer}", *QUIET]
    cli = run_cli("fit", *args)
    assert cli.trainer.global_step == 2 * cli.trainer.num_training_batches
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert torch.isfinite(torch.tensor(result["test/mse"]))
    run_cli("predict", *args, "--ckpt_path=last")
    assert list((tmp_path / layer).glob("version_*/forecasts.png"))
