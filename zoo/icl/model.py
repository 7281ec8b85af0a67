"""Transformers that regress in context (Garg et al. 2022; Bai et al. 2023; von Oswald et al. 2023;
Wu et al., "Transformers are Deep Optimizers", ICML 2025).

Every backbone maps a prompt ``xs [B, n, d], ys [B, n]`` to predictions ``[B, n]``: the prediction
at position ``i`` (0-based) is made from the ``i`` examples before it and ``x_i``, so one prompt
gives a loss on every prefix.

- ``gpt2`` (Garg et al.): tokens interleaved ``x_1, y_1, ..., x_n, y_n`` with ``x``-tokens
  ``[x_i, 0]`` and ``y``-tokens ``[0_d, y_i]``, a linear read-in, learned positions, a causal
  pre-LN transformer, a linear read-out at the ``x`` positions.
- ``encoder`` (Bai et al.; the form of Wu et al.'s construction): tokens ``[x_j, y_j, 0]`` for the
  examples and ``[x_i, 0, 1]`` for the query (its ``y`` zeroed, the last coordinate flags it), no
  positions, bidirectional attention within the prompt. Each prefix is its own prompt: position
  ``i`` runs the encoder on ``i`` examples plus the query ``x_i`` (keys beyond it masked), read out
  at the query token. That costs ``n`` times the ``gpt2`` pass; training may use a random subset
  of prefixes (``InContextRegression.train_prefixes``).

A prompt of ``m`` extra leading vectors in the model's width (``prompt_embeds [m, width]`` or
``[B, m, width]``, a soft prompt: ``zoo.prompt_tuning``) goes before the read-in tokens, ``h = [P,
read_in(tokens) + positions]``: the prompt has no position (the data tokens keep theirs), every
data token may attend to it (in ``gpt2`` the prompt is causal among itself; in ``encoder`` it is
prepended to each prefix's prompt and always visible), and its outputs are dropped before the
read-out. Without it the forward pass is unchanged.

Attention (:func:`attend`): ``softmax`` (``softmax(QK^T / sqrt(d_h))``), ``relu``
(``ReLU(QK^T) / N``, N the number of tokens attended, Bai et al. eq. (2), Wu et al.'s ReLU
attention), or ``linear`` (``QK^T / N``).

:class:`LinearSelfAttention` is one linear self-attention layer on ``[x, y]`` tokens with
:meth:`LinearSelfAttention.gd_step`, von Oswald et al.'s hand-set weights under which the layer's
output at the query is the prediction of one gradient-descent step on the in-context least squares.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError
from zoo.icl.baselines import earlier_mask

ATTENTIONS = ("softmax", "relu", "linear")
BACKBONES = ("gpt2", "encoder")


def attend(q: Tensor, k: Tensor, v: Tensor, kind: str, mask: Tensor) -> Tensor:
    """Attention of ``q, k, v [B, H, T, d_h]`` where ``mask [B or 1, 1, T, T]`` (bool) allows a key.

    ``softmax``: ``softmax(q k^T / sqrt(d_h)) v``; ``relu``: ``ReLU(q k^T) v / N``; ``linear``:
    ``(q k^T) v / N``; ``N`` = the number of keys the query may attend to.
    """
    if kind == "softmax":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = q @ k.transpose(-1, -2)
    if kind == "relu":
        scores = torch.relu(scores)
    count = mask.sum(-1, keepdim=True).clamp_min(1)
    return (scores * mask / count) @ v


class Block(nn.Module):
    """Pre-LN transformer block: ``h + Attn(LN h)``, then ``h + MLP(LN h)`` (GELU, 4x width)."""

    def __init__(self, width: int, heads: int, attention: str) -> None:
        super().__init__()
        self.heads, self.attention = heads, attention
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        b, t, w = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        h = h + self.proj(attend(q, k, v, self.attention, mask).transpose(1, 2).reshape(b, t, w))
        return h + self.mlp(self.norm2(h))


class ICLTransformer(nn.Module):
    """An in-context regressor (module docstring).

    Args:
        n_dims: d, the input dimension.
        n_positions: the most examples a prompt may have.
        width, depth, heads: the transformer's size.
        backbone: ``gpt2`` or ``encoder``.
        attention: ``softmax``, ``relu`` or ``linear``.
    """

    def __init__(self, n_dims: int, n_positions: int, width: int = 64, depth: int = 3, heads: int = 2,
                 backbone: str = "gpt2", attention: str = "softmax") -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if attention not in ATTENTIONS:
            raise ConfigError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if width % heads:
            raise ConfigError(f"width={width} must be divisible by heads={heads}")
        self.n_dims, self.n_positions, self.backbone, self.width = n_dims, n_positions, backbone, width
        self.read_in = nn.Linear(n_dims + (1 if backbone == "gpt2" else 2), width)
        self.positions = nn.Parameter(torch.randn(2 * n_positions, width) * 0.02) if backbone == "gpt2" else None
        self.blocks = nn.ModuleList(Block(width, heads, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.read_out = nn.Linear(width, 1)

    def forward(self, xs: Tensor, ys: Tensor, prefixes: Tensor | None = None,
                prompt_embeds: Tensor | None = None) -> Tensor:
        """Predictions ``[B, n]`` (``[B, len(prefixes)]`` for the encoder given ``prefixes``, the
        positions to predict), read after ``prompt_embeds`` ``[m, width]`` or ``[B, m, width]`` if given."""
        prompt = None if prompt_embeds is None else self._prompt(prompt_embeds, xs.shape[0])
        if self.backbone == "gpt2":
            return self._gpt2(xs, ys, prompt)
        return self._encoder(xs, ys, prefixes, prompt)

    def _prompt(self, prompt_embeds: Tensor, batch: int) -> Tensor:
        """``prompt_embeds`` as ``[B, m, width]``, or a one-line ``ShapeError``."""
        shape = tuple(prompt_embeds.shape)
        if prompt_embeds.dim() == 2:
            prompt_embeds = prompt_embeds[None]
        if prompt_embeds.dim() != 3 or prompt_embeds.shape[-1] != self.width or prompt_embeds.shape[0] not in (1, batch):
            raise ShapeError(f"ICLTransformer: prompt_embeds must be [m, {self.width}] or [{batch}, m, {self.width}] "
                             f"(the model's width {self.width}), got {list(shape)}")
        return prompt_embeds.expand(batch, -1, -1)

    def _trunk(self, tokens: Tensor, mask: Tensor, prompt: Tensor | None = None) -> Tensor:
        h = self.read_in(tokens)
        if self.positions is not None:
            h = h + self.positions[: h.shape[1]]
        m = 0
        if prompt is not None:
            m = prompt.shape[1]
            h = torch.cat([prompt.to(h.dtype), h], 1)
        for block in self.blocks:
            h = block(h, mask)
        return self.read_out(self.norm(h[:, m:])).squeeze(-1)

    def _gpt2(self, xs: Tensor, ys: Tensor, prompt: Tensor | None = None) -> Tensor:
        tokens = interleave(xs, ys)
        t = tokens.shape[1] + (0 if prompt is None else prompt.shape[1])
        causal = torch.ones(t, t, dtype=torch.bool, device=xs.device).tril()[None, None]
        return self._trunk(tokens, causal, prompt)[:, ::2]

    def _encoder(self, xs: Tensor, ys: Tensor, prefixes: Tensor | None, prompt: Tensor | None = None) -> Tensor:
        b, n, _ = xs.shape
        prefixes = torch.arange(n, device=xs.device) if prefixes is None else prefixes
        length = int(prefixes.max()) + 1
        tokens = encoder_tokens(xs[:, :length], ys[:, :length], prefixes)  # [B, P, length, d + 2]
        keys = torch.arange(length, device=xs.device) <= prefixes[:, None]  # [P, length]
        if prompt is not None:  # each prefix's prompt reads the soft prompt, always visible
            keys = torch.cat([keys.new_ones(len(prefixes), prompt.shape[1]), keys], 1)
            prompt = prompt.repeat_interleave(len(prefixes), 0)
        mask = keys[None, :, None, None, :].expand(b, -1, 1, 1, -1).reshape(-1, 1, 1, keys.shape[-1])
        out = self._trunk(tokens.reshape(-1, length, tokens.shape[-1]), mask, prompt).view(b, len(prefixes), length)
        return out.gather(2, prefixes.view(1, -1, 1).expand(b, -1, 1)).squeeze(-1)


def interleave(xs: Tensor, ys: Tensor) -> Tensor:
    """GPT-2 tokens ``[B, 2n, d + 1]``: ``[x_1, 0], [0_d, y_1], [x_2, 0], ...`` (Garg et al.)."""
    b, n, d = xs.shape
    x_tokens = torch.cat([xs, xs.new_zeros(b, n, 1)], -1)
    y_tokens = torch.cat([xs.new_zeros(b, n, d), ys[..., None]], -1)
    return torch.stack([x_tokens, y_tokens], 2).view(b, 2 * n, d + 1)


def encoder_tokens(xs: Tensor, ys: Tensor, prefixes: Tensor) -> Tensor:
    """Encoder prompts ``[B, P, n, d + 2]``: for prefix ``i = prefixes[p]`` the tokens
    ``[x_j, y_j, 0]``, with the query's ``y`` zeroed and flagged, ``[x_i, 0, 1]`` (Bai et al.)."""
    b, n, _ = xs.shape
    is_query = (torch.arange(n, device=xs.device) == prefixes[:, None]).to(xs.dtype)  # [P, n]
    y = ys[:, None, :] * (1 - is_query)
    flag = is_query.expand(b, -1, -1)
    return torch.cat([xs[:, None].expand(-1, len(prefixes), -1, -1), y[..., None], flag[..., None]], -1)


class LinearSelfAttention(nn.Module):
    """One linear self-attention layer on tokens ``e_j = [x_j, y_j]`` (von Oswald et al. 2023, eq. 7):

        e_q <- e_q + (1 / N) sum_j (W_V e_j) (W_K e_j)^T (W_Q e_q),

    the sum over the ``N`` context tokens, the query token ``e_q = [x_q, 0]``. The prediction is the
    last coordinate of the updated query token. ``forward(xs, ys)`` gives it at every position
    ``i`` from the examples ``j < i`` (0 at ``i = 0``).
    """

    def __init__(self, n_dims: int) -> None:
        super().__init__()
        size = n_dims + 1
        self.q = nn.Parameter(torch.randn(size, size) / math.sqrt(size))
        self.k = nn.Parameter(torch.randn(size, size) / math.sqrt(size))
        self.v = nn.Parameter(torch.randn(size, size) / math.sqrt(size))

    @classmethod
    def gd_step(cls, n_dims: int, eta: float, dtype: torch.dtype = torch.float64) -> "LinearSelfAttention":
        """The construction: ``W_K = W_Q = [[I_d, 0], [0, 0]]`` and ``W_V`` with ``eta`` in its
        bottom-right corner, so the query's ``y`` coordinate becomes
        ``(eta / N) sum_j y_j x_j^T x_q``: the prediction ``w_1^T x_q`` after one gradient step
        ``w_1 = w_0 - eta grad L(w_0)`` from ``w_0 = 0`` on ``L(w) = 1/(2N) sum_j (w^T x_j - y_j)^2``."""
        layer = cls(n_dims).to(dtype)
        eye = torch.zeros(n_dims + 1, n_dims + 1, dtype=dtype)
        eye[:n_dims, :n_dims] = torch.eye(n_dims, dtype=dtype)
        value = torch.zeros(n_dims + 1, n_dims + 1, dtype=dtype)
        value[n_dims, n_dims] = eta
        with torch.no_grad():
            layer.q.copy_(eye)
            layer.k.copy_(eye)
            layer.v.copy_(value)
        return layer

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        e = torch.cat([xs, ys[..., None]], -1)  # context tokens [B, n, d + 1]
        query = torch.cat([xs, torch.zeros_like(ys)[..., None]], -1)  # query tokens
        scores = (query @ self.q.T) @ (e @ self.k.T).transpose(1, 2)  # [B, n (query), n (key)]
        n = xs.shape[1]
        earlier = earlier_mask(n, xs.device)
        count = earlier.sum(-1, keepdim=True).clamp_min(1)
        return ((scores * earlier / count) @ (e @ self.v.T))[..., -1]
