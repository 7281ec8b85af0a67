"""Diffusion Transformer (Peebles & Xie, 2023, "Scalable Diffusion Models with Transformers").

A DiT maps a noisy image or latent ``x [B, C, I, I]``, its diffusion timestep ``t [B]`` and a
class label ``y [B]`` to a prediction of the same spatial size (the noise, and with
``learn_sigma`` also the interpolation weights of the variance: ``2C`` channels).

Patchify. ``p x p`` patches are embedded linearly (a Conv2d with kernel = stride = ``p``) into
``T = (I / p)^2`` tokens of width ``D``, in row-major order, plus a frozen 2-D sin-cos positional
embedding: with ``q = D / 4`` and ``w_k = 10000^(-k / q)``, the token in row ``r`` and column
``c`` gets

    [sin(c w_k), cos(c w_k), sin(r w_k), cos(r w_k)],    k = 0 .. q-1

(the column first, as in MAE and DiT, so their positional tables are ours).

Conditioning. ``t`` becomes a 256-d frequency embedding ``[cos(t f_k), sin(t f_k)]`` with
``f_k = 10000^(-k / 128)``, then Linear -> SiLU -> Linear to ``D``. ``y`` indexes a table of
``num_classes + 1`` rows; the last row is the null class (``null_class``). In training each label
is replaced by the null class with probability ``class_dropout``, so one network learns both the
conditional and the unconditional model that classifier-free guidance combines;
``force_drop`` replaces chosen labels by the null class in any mode. ``num_classes = 0`` is an
unconditional model: no label table, ``y = None``. Two ways to feed ``(t, y)`` to the blocks:

- ``adaln_zero``: ``c = t_emb + y_emb`` regresses, per block, a shift, scale and gate for the
  attention and for the MLP (SiLU -> Linear to ``6D``)::

      x = x + gate_a * Attn(LN(x) (1 + scale_a) + shift_a)
      x = x + gate_m * MLP(LN(x) (1 + scale_m) + shift_m)

  with LayerNorm without affine parameters (eps 1e-6). The regressions start at zero, so each
  block starts as the identity; the final layer (LN modulated by a shift and scale of ``c``, then
  Linear) starts at zero too, and so does the whole network's output. The best variant in the
  paper (Table 4: FID 19.47 against 35.24 for in-context at XL/2, 400K steps).
- ``in_context``: ``t_emb`` and ``y_emb`` are appended to the patch sequence as two more tokens
  (one without labels) and go through plain pre-norm blocks, ``x = x + Attn(LN(x))`` and
  ``x = x + MLP(LN(x))`` (LN with affine parameters); they are dropped before the final layer
  (LN + a zero-initialised Linear). This is the conditioning the statistical theory of
  conditional DiTs analyses.

Attention is multi-head self-attention through ``F.scaled_dot_product_attention`` (one Linear for
q, k, v), the MLP is Linear -> GELU (tanh approximation) -> Linear with ``mlp_ratio * D`` hidden
units. The final layer predicts ``p * p * C_out`` values per token, unpatchified to
``[B, C_out, I, I]``.

Init as in DiT: Xavier-uniform Linear weights with zero biases, the patch embedding initialised
as the Linear it is (Xavier on the flattened kernel), N(0, 0.02) for the label table and the
timestep MLP, zeros for the modulation regressions and the final layer's output.

Sizes (``DIT_SIZES``, paper Table 1): S 12 blocks / D 384 / 6 heads, B 12/768/12, L 24/1024/16,
XL 28/1152/16, with patch 2, 4 or 8 (``dit("DiT-XL/2")``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError

CONDITIONINGS = ("adaln_zero", "in_context")
FREQUENCY_DIM = 256  # width of the timestep's sinusoidal embedding

DIT_SIZES: dict[str, dict[str, int]] = {
    "DiT-tiny": dict(depth=2, hidden_size=64, num_heads=4),
    "DiT-S": dict(depth=12, hidden_size=384, num_heads=6),
    "DiT-B": dict(depth=12, hidden_size=768, num_heads=12),
    "DiT-L": dict(depth=24, hidden_size=1024, num_heads=16),
    "DiT-XL": dict(depth=28, hidden_size=1152, num_heads=16),
}


# -- fixed embeddings and the patch layout ------------------------------------------------------
def sincos_embedding(positions: Tensor, dim: int) -> Tensor:
    """``[sin(pos w_k), cos(pos w_k)]`` with ``w_k = 10000^(-k / (dim/2))``: ``[N] -> [N, dim]``."""
    omega = 10000.0 ** -(torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Positional table ``[grid * grid, dim]`` (float64) of a row-major ``grid x grid`` patch grid:
    the column's sin-cos embedding in the first half, the row's in the second (module docstring)."""
    if dim % 4:
        raise ConfigError(f"the 2-D sin-cos positional embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos_embedding(cols.flatten(), dim // 2), sincos_embedding(rows.flatten(), dim // 2)], dim=1)


def timestep_embedding(t: Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10000.0) -> Tensor:
    """``[cos(t f_k), sin(t f_k)]`` with ``f_k = max_period^(-k / (dim/2))``: ``[B] -> [B, dim]`` (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def patchify(x: Tensor, p: int) -> Tensor:
    """``[B, C, H, W] -> [B, (H/p)(W/p), p*p*C]``: row-major patches, each flattened as (row, column, channel)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, p: int, channels: int) -> Tensor:
    """Inverse of :func:`patchify` for a square grid: ``[B, T, p*p*C] -> [B, C, sqrt(T) p, sqrt(T) p]``."""
    b, tokens, _ = x.shape
    g = math.isqrt(tokens)
    x = x.reshape(b, g, g, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, g * p, g * p)


# -- layers --------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention, ``softmax(q k^T / sqrt(d_head)) v`` per head, then a projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, d_head]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x (1 + scale) + shift`` with per-sample ``shift, scale [B, 1, D]`` over the tokens of ``x [B, N, D]``."""
    return x * (1 + scale) + shift


class AdaLNZeroBlock(nn.Module):
    """Transformer block whose LayerNorms are modulated, and whose branches gated, by ``c``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(dim, mlp_ratio)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class Block(nn.Module):
    """Plain pre-norm transformer block (in-context conditioning)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """LayerNorm (modulated by ``c`` when ``adaptive``, else with affine parameters), then a Linear to
    the ``p * p * C_out`` values of each patch."""

    def __init__(self, dim: int, out: int, adaptive: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        self.linear = nn.Linear(dim, out)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim)) if adaptive else None

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        x = self.norm(x)
        if self.modulation is not None:
            shift, scale = self.modulation(c)[:, None].chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.linear(x)


class TimestepEmbedder(nn.Module):
    """``t [B]`` (int or float) -> 256-d frequency embedding -> Linear -> SiLU -> Linear -> ``[B, D]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with a last, null row; labels drop to the null class with probability
    ``dropout`` in training, and wherever ``force_drop`` is True in any mode."""

    def __init__(self, num_classes: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.null_class, self.dropout = num_classes, dropout
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor, force_drop: Tensor | None = None) -> Tensor:
        drop = force_drop
        if drop is None and self.training and self.dropout > 0:
            drop = torch.rand(y.shape, device=y.device) < self.dropout
        if drop is not None:
            y = torch.where(drop, self.null_class, y)
        return self.table(y)


# -- the model -----------------------------------------------------------------------------------
class DiT(nn.Module):
    """Diffusion Transformer (module docstring): ``forward(x, t, y) -> [B, C_out, I, I]``.

    Args:
        input_size: height = width ``I`` of the input (pixels or latent cells).
        patch_size: ``p``; must divide ``input_size``.
        in_channels: ``C``.
        hidden_size, depth, num_heads, mlp_ratio: width ``D``, number of blocks, attention heads
            (must divide ``D``) and MLP expansion.
        num_classes: class labels ``0 .. num_classes - 1``; ``num_classes`` itself is the null
            class. 0 builds an unconditional model.
        class_dropout: probability in ``[0, 1)`` of dropping a label to the null class in training.
        conditioning: ``adaln_zero`` or ``in_context``.
        learn_sigma: predict ``2C`` channels (noise and variance), else ``C``.
    """

    def __init__(
        self,
        input_size: int = 8,
        patch_size: int = 2,
        in_channels: int = 1,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 10,
        class_dropout: float = 0.1,
        conditioning: str = "adaln_zero",
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        sizes = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                     hidden_size=hidden_size, depth=depth, num_heads=num_heads)
        for name, value in sizes.items():
            if value < 1:
                raise ConfigError(f"DiT: {name} must be >= 1, got {value}")
        if input_size % patch_size:
            raise ConfigError(f"DiT: input_size {input_size} is not divisible by patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ConfigError(f"DiT: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if hidden_size % 4:
            raise ConfigError(f"DiT: hidden_size must be divisible by 4 (2-D sin-cos positions), got {hidden_size}")
        if not mlp_ratio > 0:
            raise ConfigError(f"DiT: mlp_ratio must be > 0, got {mlp_ratio}")
        if num_classes < 0:
            raise ConfigError(f"DiT: num_classes must be >= 0 (0: unconditional), got {num_classes}")
        if not 0 <= class_dropout < 1:
            raise ConfigError(f"DiT: class_dropout must be in [0, 1), got {class_dropout}")
        if conditioning not in CONDITIONINGS:
            raise ConfigError(f"DiT: conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes, self.conditioning = num_classes, conditioning
        self.null_class = num_classes if num_classes else None

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        grid = input_size // patch_size
        self.register_buffer("pos_embed", pos_embed_2d(hidden_size, grid).float()[None])  # [1, T, D]
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout) if num_classes else None
        adaptive = conditioning == "adaln_zero"
        block = AdaLNZeroBlock if adaptive else Block
        self.blocks = nn.ModuleList(block(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size * patch_size * self.out_channels, adaptive)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT's init (module docstring); the adaLN-Zero model then outputs exactly zero."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
            nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.out_channels, -1))
            nn.init.zeros_(self.patch_embed.bias)
            for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02)
            if self.y_embedder is not None:
                nn.init.normal_(self.y_embedder.table.weight, std=0.02)
            zero = [self.final.linear]
            if self.conditioning == "adaln_zero":
                zero += [block.modulation[1] for block in self.blocks] + [self.final.modulation[1]]
            for layer in zero:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def _check(self, x: Tensor, t: Tensor, y: Tensor | None, force_drop: Tensor | None) -> None:
        expected = [self.in_channels, self.input_size, self.input_size]
        if x.dim() != 4 or list(x.shape[1:]) != expected:
            raise ShapeError(f"DiT: x must have shape [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        b = x.shape[0]
        if t.shape != (b,):
            raise ShapeError(f"DiT: t must have shape [B] = [{b}], got {list(t.shape)}")
        if self.y_embedder is None:
            if y is not None or force_drop is not None:
                raise ConfigError("DiT: this model is unconditional (num_classes=0): pass y=None and no force_drop")
            return
        if y is None:
            raise ConfigError(f"DiT: y is required (num_classes={self.num_classes}); the null class is {self.null_class}")
        if y.shape != (b,) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ShapeError(f"DiT: y must be integer class ids of shape [B] = [{b}], got {y.dtype} {list(y.shape)}")
        if force_drop is not None and (force_drop.shape != (b,) or force_drop.dtype != torch.bool):
            raise ShapeError(f"DiT: force_drop must be a bool mask of shape [B] = [{b}], "
                             f"got {force_drop.dtype} {list(force_drop.shape)}")
        # Label values are read only where that is free, on the CPU: on an accelerator it would stop
        # the host every step until the device catches up (callers check labels once, on the CPU:
        # ConditionalDiT before a batch is moved, and before sampling); compiled graphs skip it.
        if y.device.type == "cpu" and not torch.compiler.is_compiling():
            bad = (y < 0) | (y > self.num_classes)
            if bad.any():
                raise ConfigError(f"DiT: class ids must be in [0, {self.num_classes}] ({self.num_classes} = null), "
                                  f"got {y[bad].tolist()}")

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, force_drop: Tensor | None = None) -> Tensor:
        """``x [B, C, I, I]``, ``t [B]``, ``y [B]`` (None when unconditional), ``force_drop [B]`` bool
        -> ``[B, C_out, I, I]``."""
        self._check(x, t, y, force_drop)
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B, T, D]
        conds = [self.t_embedder(t)]
        if self.y_embedder is not None:
            conds.append(self.y_embedder(y, force_drop))
        if self.conditioning == "adaln_zero":
            c = sum(conds)
            for block in self.blocks:
                x = block(x, c)
            x = self.final(x, c)
        else:
            tokens = x.shape[1]
            x = torch.cat([x, torch.stack(conds, dim=1)], dim=1)  # [B, T + 1 or 2, D]
            for block in self.blocks:
                x = block(x)
            x = self.final(x[:, :tokens])
        return unpatchify(x, self.patch_size, self.out_channels)


def dit(name: str, patch_size: int | None = None, **kwargs) -> DiT:
    """A DiT of a named size, ``"DiT-S/2"`` or ``("DiT-S", patch_size=2)`` (patch 2 by default);
    ``kwargs`` go to :class:`DiT` and may override the size's entries."""
    size, slash, patch = name.partition("/")
    if size not in DIT_SIZES:
        raise ConfigError(f"unknown DiT size {name!r}; available: {', '.join(DIT_SIZES)} "
                          f"(optionally with a patch size, e.g. 'DiT-S/2')")
    if slash:
        if not patch.isdigit():
            raise ConfigError(f"DiT name {name!r}: the part after '/' must be the patch size, e.g. 'DiT-S/2'")
        if patch_size is not None and patch_size != int(patch):
            raise ConfigError(f"DiT name {name!r} says patch size {patch}, but patch_size={patch_size}")
        patch_size = int(patch)
    return DiT(**{**DIT_SIZES[size], "patch_size": 2 if patch_size is None else patch_size, **kwargs})
