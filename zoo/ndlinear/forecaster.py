"""Time-series forecaster: a small transformer encoder with dense or NdLinear maps (NdLinear
paper, Sec. 4, time series: a one-layer encoder with NdLinear feed-forward on ETT).

Input windows ``x: [B, L, C_in]`` (look-back ``L``), targets ``y: [B, H, C_out]`` (horizon ``H``):

1. embed every step: ``Linear(C_in, d)`` plus a learned position embedding ``[L, d]``;
2. ``num_layers`` pre-norm encoder blocks, ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``;
3. map the whole ``[L, d]`` sequence to the forecast ``[H, C_out]``.

``layer`` picks the maps of steps 2-3:

- ``dense``: the usual per-step FFN ``Linear(d, f) -> GELU -> Linear(f, d)`` and a flattening
  head ``Linear(L*d, H*C_out)``;
- ``ndlinear``: an FFN that treats each sequence as an ``[L, d]`` tensor,
  ``NdLinear((L, d), (L, f)) -> GELU -> NdLinear((L, f), (L, d))`` (mixing over time as well as
  channels), and the head ``NdLinear((L, d), (H, C_out))``, which keeps time and channel modes
  apart instead of flattening them.

With ``revin``, reversible instance normalization (Kim et al., ICLR 2022) wraps steps 1-3: each
window's variables are standardized by their own look-back mean and standard deviation on the
way in (``RevIN``) and the forecast is mapped back with the same statistics.

Trained with MSE on the scaled series; MSE and MAE (torchmetrics) reported on the scaled series,
as in the ETT literature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from zoo.core.errors import ConfigError
from zoo.core.module import ZooModule
from zoo.core.plots import forecast_panel
from zoo.ndlinear.layer import NdLinear

LAYERS = ("dense", "ndlinear")
PANELS = 4  # windows drawn in forecasts.png


class RevIN(nn.Module):
    """Reversible instance normalization (Kim et al., 2022) of windows ``[B, L, C]``:
    ``normalize`` returns ``(x - mu) / sigma * gamma + beta`` per window and variable (``mu``,
    ``sigma`` over the look-back, ``sigma`` with ``eps`` inside the square root) and keeps
    ``mu, sigma`` for ``denormalize``, which inverts it on the forecast ``[B, H, C]``."""

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels)) if affine else None
        self.beta = nn.Parameter(torch.zeros(channels)) if affine else None

    def normalize(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        mean = x.mean(dim=1, keepdim=True)
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)
        x = (x - mean) / std
        if self.gamma is not None:
            x = x * self.gamma + self.beta
        return x, (mean, std)

    def denormalize(self, y: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        mean, std = stats
        if self.gamma is not None:
            y = (y - self.beta) / (self.gamma + self.eps * self.eps)
        return y * std + mean


class FeedForward(nn.Module):
    def __init__(self, layer: str, lookback: int, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        if layer == "dense":
            up, down = nn.Linear(d_model, ff_dim), nn.Linear(ff_dim, d_model)
        else:
            up, down = NdLinear((lookback, d_model), (lookback, ff_dim)), NdLinear((lookback, ff_dim), (lookback, d_model))
        self.net = nn.Sequential(up, nn.GELU(), nn.Dropout(dropout), down, nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class EncoderBlock(nn.Module):
    def __init__(self, layer: str, lookback: int, d_model: int, num_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.ffn = FeedForward(layer, lookback, d_model, ff_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.ffn(self.norm2(x))


class WindowForecast:
    """What window forecasters (:class:`Forecaster`, ``baselines``) share: validation/test MSE and
    MAE on the scaled series (``self.metrics``), and ``predict``, which returns the forecasts and
    draws the first windows' last variable (look-back, truth, forecast) to ``forecasts.png``. A class
    using it defines ``target_width()``: the hyperparameter that sets the number of forecast
    variables, and its value. ``training_step`` minimizes the MSE (the baselines override it)."""

    def init_metrics(self) -> None:
        """``self.metrics``: validation and test MSE / MAE (torchmetrics)."""
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": metric()
            for stage in ("val", "test") for name, metric in (("mse", MeanSquaredError), ("mae", MeanAbsoluteError))
        })

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log_train(batch_idx, loss=loss)
        return loss

    def plot_title(self) -> str:
        return f"forecaster, horizon {self.hparams.horizon}"

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        name, width = self.target_width()
        self.check_shape("target window", y, (None, self.hparams.horizon, width),
                         f" (set model.init_args.horizon / {name} to match the data)")
        prediction = self(x).reshape(-1)  # flat: the metrics view() their inputs
        for metric_name in ("mse", "mae"):
            metric = self.metrics[f"{stage}_{metric_name}"]
            metric(prediction, y.reshape(-1))
            self.log(f"{stage}/{metric_name}", metric, prog_bar=True)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        forecast = self(x)
        if batch_idx == 0:
            self._shown = (x[:PANELS].cpu(), y[:PANELS].cpu(), forecast[:PANELS].cpu())
        return forecast

    def on_predict_epoch_end(self) -> None:
        path = self.output_path("forecasts.png", per_rank=False)  # every rank: a collective
        if getattr(self, "_shown", None) is not None and self.trainer.is_global_zero:
            forecast_panel(*self._shown, path, title=self.plot_title())
            print(f"wrote {path}")
        self._shown = None


class Forecaster(WindowForecast, ZooModule):
    """Transformer-encoder forecaster (module docstring).

    Args:
        lookback, horizon: input and forecast lengths (must match the DataModule's).
        in_features, out_features: channels of the input and of the forecast.
        d_model, num_heads, ff_dim, num_layers, dropout: encoder size.
        layer: ``dense`` or ``ndlinear`` feed-forward and output maps.
        lr, weight_decay: AdamW; the learning rate follows a cosine to 0 over the run.
        revin: reversible instance normalization around the model (needs in_features ==
            out_features: the forecast variables are the input's).
    """

    def __init__(
        self,
        lookback: int = 96,
        horizon: int = 24,
        in_features: int = 7,
        out_features: int = 7,
        d_model: int = 32,
        num_heads: int = 4,
        ff_dim: int = 64,
        num_layers: int = 1,
        dropout: float = 0.1,
        layer: str = "ndlinear",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        revin: bool = False,
    ) -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ConfigError(f"Forecaster layer must be one of {LAYERS}, got {layer!r}")
        if revin and in_features != out_features:
            raise ConfigError(f"Forecaster(revin=True) forecasts the input's variables: in_features={in_features} "
                              f"must equal out_features={out_features}")
        if d_model % num_heads:
            raise ConfigError(f"Forecaster: d_model={d_model} must be divisible by num_heads={num_heads}")
        self.save_hyperparameters()
        self.revin = RevIN(in_features) if revin else None
        self.embed = nn.Linear(in_features, d_model)
        self.position = nn.Parameter(torch.randn(lookback, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            EncoderBlock(layer, lookback, d_model, num_heads, ff_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        if layer == "dense":
            self.head = nn.Sequential(nn.Flatten(1), nn.Linear(lookback * d_model, horizon * out_features),
                                      nn.Unflatten(1, (horizon, out_features)))
        else:
            self.head = NdLinear((lookback, d_model), (horizon, out_features))
        self.init_metrics()

    def forward(self, x: Tensor) -> Tensor:
        hp = self.hparams
        self.check_shape("input window", x, (None, hp.lookback, hp.in_features),
                         " (set model.init_args.lookback / in_features to match the data)")
        if self.revin is not None:
            x, stats = self.revin.normalize(x)
        h = self.embed(x) + self.position
        for block in self.blocks:
            h = block(h)
        y = self.head(self.norm(h))
        return y if self.revin is None else self.revin.denormalize(y, stats)

    def target_width(self) -> tuple[str, int]:
        return "out_features", self.hparams.out_features

    def plot_title(self) -> str:
        return f"{self.hparams.layer} forecaster, horizon {self.hparams.horizon}"
