"""Forecaster: shapes and parameter counts by formula for both layer kinds, shape errors, and
that it beats the naive forecast on a periodic series."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from zoo.core.errors import ConfigError, ShapeError
from zoo.ndlinear import Forecaster


def shared_params(lookback: int, c_in: int, d: int) -> int:
    embed, position = c_in * d + d, lookback * d
    attention = 4 * d * d + 4 * d  # in_proj (3d x d + 3d) and out_proj (d x d + d)
    norms = 3 * 2 * d  # two per block, one final
    return embed + position + attention + norms


@pytest.mark.parametrize("layer", ["dense", "ndlinear"])
def test_parameter_count_by_formula(layer):
    L, H, C, d, f = 96, 24, 7, 32, 64
    model = Forecaster(lookback=L, horizon=H, in_features=C, out_features=C, d_model=d, ff_dim=f, layer=layer)
    if layer == "dense":
        ffn = d * f + f + f * d + d
        head = L * d * H * C + H * C
    else:
        ffn = (L * L + L + d * f + f) + (L * L + L + f * d + d)
        head = L * H + H + d * C + C
    assert model.parameter_counts()["params/total"] == shared_params(L, C, d) + ffn + head
    assert model(torch.randn(3, L, C)).shape == (3, H, C)


def test_shape_errors_and_bad_arguments():
    model = Forecaster(lookback=24, horizon=12, in_features=7, out_features=7)
    with pytest.raises(ShapeError, match=r"input window must have shape \[\*, 24, 7\], got \[2, 96, 7\]"):
        model(torch.randn(2, 96, 7))
    with pytest.raises(ConfigError, match="layer must be one of"):
        Forecaster(layer="conv")
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        Forecaster(d_model=30, num_heads=4)


@pytest.mark.parametrize("layer", ["ndlinear", "dense"])
def test_learns_a_periodic_series_better_than_repeating_the_last_value(tmp_path, layer):
    """The claim at tiny scale: after 2 epochs the test MSE is below the naive last-value forecast."""
    t = np.arange(1200)
    rng = np.random.default_rng(0)
    series = np.stack([np.sin(2 * np.pi * t / period + k) for k, period in enumerate((24, 12, 48, 24))], axis=1)
    series += 0.05 * rng.standard_normal(series.shape)
    rows = [f"{i},{','.join(f'{v:.5f}' for v in row)}" for i, row in enumerate(series)]
    (tmp_path / "toy.csv").write_text("date,a,b,c,OT\n" + "\n".join(rows) + "\n")
    cli = run_cli(
        "fit", "--model=Forecaster", "--data=TimeSeriesDataModule",
        f"--data.data_dir={tmp_path}", "--data.file=toy.csv", "--data.lookback=48", "--data.horizon=12",
        "--data.batch_size=32", "--model.lookback=48", "--model.horizon=12", "--model.in_features=4",
        "--model.out_features=4", f"--model.layer={layer}", "--model.lr=0.003", "--trainer.max_epochs=2",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    )
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    x, y = cli.datamodule.test_set.__getitems__(list(range(len(cli.datamodule.test_set))))
    naive = torch.mean((x[:, -1:, :] - y) ** 2).item()
    assert result["test/mse"] < 0.5 * naive, (result, naive)
    run_cli("predict", "--model=Forecaster", "--data=TimeSeriesDataModule",
            f"--data.data_dir={tmp_path}", "--data.file=toy.csv", "--data.lookback=48", "--data.horizon=12",
            "--model.lookback=48", "--model.horizon=12", "--model.in_features=4", "--model.out_features=4",
            f"--model.layer={layer}", f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
            f"--ckpt_path={cli.trainer.checkpoint_callback.last_model_path}")
    assert list(tmp_path.glob("version_*/forecasts.png"))
