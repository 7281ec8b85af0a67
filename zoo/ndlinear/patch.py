"""A PatchTST-style forecaster (Nie et al., ICLR 2023, "A Time Series is Worth 64 Words") with
dense or NdLinear maps: the competitive transformer backbone of issue 23 in which NdLinear is
tested against dense layers at equal settings.

Look-back ``x: [B, L, C]`` -> forecast ``[B, H, C]``, every variable on its own (channel
independence, the variables folded into the batch):

1. RevIN (``forecaster.RevIN``): standardize each window's variables by their own look-back
   statistics; the forecast is mapped back at the end;
2. patches: the series, extended at its end by ``stride`` copies of its last value, cut into
   ``N = (L - patch_len) // stride + 2`` overlapping patches of ``patch_len`` steps ``[N, P]``;
3. embed: patch -> ``d_model`` plus a learned position per patch;
4. ``num_layers`` pre-norm encoder blocks over the ``N`` patch tokens (``forecaster.EncoderBlock``;
   PatchTST uses post-norm with BatchNorm: a documented difference);
5. head: the ``[N, d]`` token matrix -> the horizon ``H``.

``layer`` picks the maps of steps 3-5:

- ``dense``: ``Linear(P, d)`` per patch, the per-token FFN and PatchTST's flattening head
  ``Linear(N d, H)``;
- ``ndlinear``: the embedding ``NdLinear((N, P), (N, d))`` (a map over patches times a map over a
  patch's steps), the FFN ``NdLinear((N, d), (N, f))`` ... as in ``forecaster.FeedForward``, and
  the head ``NdLinear((N, d), (H / p, p))`` (a map from patches to the horizon's days times a map
  from features to the hours of a day, ``p = period``) instead of flattening.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.core.errors import ConfigError
from zoo.core.module import ZooModule
from zoo.ndlinear.forecaster import LAYERS, EncoderBlock, RevIN, WindowForecast
from zoo.ndlinear.layer import NdLinear


class PatchForecaster(WindowForecast, ZooModule):
    """PatchTST-style forecaster (module docstring).

    Args:
        lookback, horizon, channels: window lengths and the number of variables (the DataModule's).
        patch_len, stride: patch length and the step between patch starts (PatchTST: 16, 8).
        d_model, num_heads, ff_dim, num_layers, dropout: encoder size (PatchTST's ETTh1 setting is
            16, 4, 128, 3, 0.3).
        head_dropout: dropout before the head.
        layer: ``dense`` or ``ndlinear`` embedding, feed-forward and head.
        period: the second mode of the NdLinear head's output (horizon = days x period); the
            horizon must be a multiple of it (``ndlinear`` only).
        revin: reversible instance normalization (with its affine part) around the model.
        lr, weight_decay: AdamW; the learning rate follows a cosine to 0 over the run.
    """

    def __init__(
        self,
        lookback: int = 96,
        horizon: int = 96,
        channels: int = 7,
        patch_len: int = 16,
        stride: int = 8,
        d_model: int = 16,
        num_heads: int = 4,
        ff_dim: int = 128,
        num_layers: int = 3,
        dropout: float = 0.3,
        head_dropout: float = 0.0,
        layer: str = "dense",
        period: int = 24,
        revin: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ConfigError(f"PatchForecaster: layer must be one of {LAYERS}, got {layer!r}")
        if not 1 <= patch_len <= lookback:
            raise ConfigError(f"PatchForecaster: patch_len must be between 1 and lookback={lookback}, got {patch_len}")
        if stride < 1:
            raise ConfigError(f"PatchForecaster: stride must be >= 1, got {stride}")
        if d_model % num_heads:
            raise ConfigError(f"PatchForecaster: d_model={d_model} must be divisible by num_heads={num_heads}")
        for key, value in (("horizon", horizon), ("channels", channels)):
            if value < 1:
                raise ConfigError(f"PatchForecaster: {key} must be >= 1, got {value}")
        if layer == "ndlinear" and (period < 1 or horizon % period):
            raise ConfigError(f"PatchForecaster(layer='ndlinear'): horizon={horizon} must be a multiple of "
                              f"period={period}")
        self.save_hyperparameters()
        patches = (lookback - patch_len) // stride + 2
        self.patches = patches
        self.revin = RevIN(channels) if revin else None
        if layer == "dense":
            self.embed = nn.Linear(patch_len, d_model)
            self.head = nn.Sequential(nn.Flatten(1), nn.Dropout(head_dropout), nn.Linear(patches * d_model, horizon))
        else:
            self.embed = NdLinear((patches, patch_len), (patches, d_model))
            self.head = nn.Sequential(nn.Dropout(head_dropout), NdLinear((patches, d_model), (horizon // period, period)),
                                      nn.Flatten(1))
        self.position = nn.Parameter(torch.randn(patches, d_model) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(layer, patches, d_model, num_heads, ff_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.init_metrics()

    def patchify(self, series: Tensor) -> Tensor:
        """``[N, L]`` -> ``[N, patches, patch_len]`` (the end padded by ``stride`` repeats)."""
        hp = self.hparams
        padded = torch.cat([series, series[:, -1:].expand(-1, hp.stride)], dim=1)
        return padded.unfold(1, hp.patch_len, hp.stride)

    def forward(self, x: Tensor) -> Tensor:
        hp = self.hparams
        self.check_shape("input window", x, (None, hp.lookback, hp.channels),
                         " (set model.init_args.lookback / channels to match the data)")
        if self.revin is not None:
            x, stats = self.revin.normalize(x)
        batch = x.shape[0]
        tokens = self.patchify(x.transpose(1, 2).reshape(batch * hp.channels, hp.lookback))
        h = self.drop(self.embed(tokens) + self.position)
        for block in self.blocks:
            h = block(h)
        y = self.head(self.norm(h)).reshape(batch, hp.channels, hp.horizon).transpose(1, 2)
        return y if self.revin is None else self.revin.denormalize(y, stats)

    def target_width(self) -> tuple[str, int]:
        return "channels", self.hparams.channels

    def plot_title(self) -> str:
        return f"{self.hparams.layer} patch forecaster, horizon {self.hparams.horizon}"
