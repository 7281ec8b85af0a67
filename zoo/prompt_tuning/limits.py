"""The paper's setting made measurable: prompt tuning of a frozen random one-layer, one-head
transformer (Hu et al., ICLR 2025, "Fundamental Limits of Prompt Tuning Transformers"), its
universality and memorization experiments, and the prompt-induced queries and keys whose size sets
the efficiency phase transition.

The model (plain torch; only the paper's abstract and a paragraph of its introduction were reachable,
so the block below is the standard single-layer transformer its abstract names, not a copy of its
definitions; its universality construction adds FFN layers around the attention)::

    H = X + E_pos                                  X [L, d]; E_pos a frozen random buffer
    Z = [P, H]                                     P [m, d]: the soft prompt, the only trainable part
    A = Z + W_O softmax(s Q K^T) V,   Q = Z W_Q, K = Z W_K, V = Z W_V,   s = 1 / sqrt(d)
    tau_P(X) = (A + W_2 relu(W_1 A + b_1) + b_2)[m:]          the outputs at the L input positions

one head, no normalization, non-causal attention. The projections are ``nn.Linear`` modules named
``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``fc1``, ``fc2``, so ``zoo.lora.apply_lora`` can
adapt them (the benchmark does; this package does not import another paper's package). The
positional buffer makes the map position-aware: without it the block is permutation-equivariant and
could not fit a generic sequence-to-sequence map. The prompt carries no position (it is free).

``attention="fast"`` replaces ``softmax(s Q K^T) V`` by the polynomial method of
:mod:`zoo.nn.fast_attention` (degree-g Taylor features, no exact fallback), which is accurate while
the entries of ``s^{1/2} Q`` and ``s^{1/2} K`` are small: the norm bound that the paper's phase
transition is about (:func:`prompt_qkv`, :func:`entry_scale`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError
from zoo.nn.fast_attention import exact_attention, fast_attention
from zoo.prompt_tuning.soft_prompt import SoftPrompt

ATTENTIONS = ("exact", "fast")


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


class OneLayerTransformer(nn.Module):
    """The frozen random single-layer, single-head transformer of the module docstring.

    Weights are drawn from ``seed`` (Gaussian, variance ``1 / fan_in``; biases of fc1/fc2 likewise
    scaled), so the same seed gives the same model in any process. ``E_pos`` is N(0, 1) times
    ``position_scale`` (the phase experiment shrinks it, so that one factor on the prompt and the inputs
    sets the entry bound).
    """

    def __init__(self, dim: int = 4, hidden: int = 16, max_len: int = 64, seed: int = 0,
                 position_scale: float = 1.0) -> None:
        super().__init__()
        self.dim, self.hidden, self.max_len = _positive("dim", dim), _positive("hidden", hidden), _positive("max_len", max_len)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p.shape[-1] if p.dim() == 2 else (dim if p.shape[0] == hidden else hidden)
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        self.register_buffer("position", position_scale * torch.randn(max_len, dim, generator=g))

    def inputs(self, x: Tensor, prompt: Tensor | None = None) -> Tensor:
        """``Z = [P, X + E_pos]``: ``x [B, L, d]``, ``prompt [m, d]`` or None -> ``[B, m + L, d]``."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ShapeError(f"x must be [B, L, {self.dim}], got {tuple(x.shape)}")
        if x.shape[1] > self.max_len:
            raise ShapeError(f"sequence length {x.shape[1]} exceeds max_len={self.max_len}")
        z = x + self.position[: x.shape[1]].to(x.dtype)
        if prompt is None:
            return z
        if prompt.dim() != 2 or prompt.shape[-1] != self.dim:
            raise ShapeError(f"soft prompt width {prompt.shape[-1] if prompt.dim() else None} does not match "
                             f"the transformer's width {self.dim}; expected [m, {self.dim}], got {tuple(prompt.shape)}")
        return torch.cat([prompt.to(x.dtype)[None].expand(x.shape[0], -1, -1), z], dim=1)

    def block(self, z: Tensor, attention: str = "exact", degree: int = 4) -> Tensor:
        """The layer on the whole sequence ``Z [B, T, d] -> [B, T, d]`` (attention, then the FFN)."""
        if attention not in ATTENTIONS:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        q, k, v = self.q_proj(z), self.k_proj(z), self.v_proj(z)
        if attention == "exact":
            mixed = exact_attention(q, k, v)
        else:
            mixed = fast_attention(q, k, v, degree=degree, exact_fallback=False)
        a = z + self.o_proj(mixed)
        return a + self.fc2(torch.relu(self.fc1(a)))

    def forward(self, x: Tensor, prompt: Tensor | None = None, attention: str = "exact", degree: int = 4) -> Tensor:
        """``tau_P(X)``: the outputs at the ``L`` input positions, ``[B, L, d]``."""
        m = 0 if prompt is None else prompt.shape[0]
        return self.block(self.inputs(x, prompt), attention, degree)[:, m:]


def reference_forward(model: OneLayerTransformer, x: Tensor, prompt: Tensor | None = None) -> Tensor:
    """Slow, obviously-correct loop of the module docstring's equations for one sequence at a time
    (the test reference; run it in fp64)."""
    w = {n: getattr(model, n).weight.detach().to(x.dtype) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")}
    b1, b2 = model.fc1.bias.detach().to(x.dtype), model.fc2.bias.detach().to(x.dtype)
    s = 1.0 / math.sqrt(model.dim)
    outs = []
    for seq in x:
        tokens = [] if prompt is None else [p for p in prompt.to(x.dtype)]
        tokens += [seq[i] + model.position[i].to(x.dtype) for i in range(seq.shape[0])]
        rows = []
        for zi in tokens:
            scores = [s * torch.dot(w["q_proj"] @ zi, w["k_proj"] @ zj) for zj in tokens]
            top = max(float(c) for c in scores)
            weights = [torch.exp(c - top) for c in scores]
            total = sum(weights)
            mixed = sum(wj * (w["v_proj"] @ zj) for wj, zj in zip(weights, tokens)) / total
            a = zi + w["o_proj"] @ mixed
            hidden = torch.clamp(w["fc1"] @ a + b1, min=0)
            rows.append(a + w["fc2"] @ hidden + b2)
        m = len(tokens) - seq.shape[0]
        outs.append(torch.stack(rows[m:]))
    return torch.stack(outs)


class PromptedTransformer(nn.Module):
    """A frozen :class:`OneLayerTransformer` with a trainable :class:`SoftPrompt` of ``m`` tokens."""

    def __init__(self, model: OneLayerTransformer, num_virtual_tokens: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.prompt = SoftPrompt(num_virtual_tokens, model.dim)
        with torch.no_grad():
            self.prompt.embedding.weight.mul_(init_scale)

    def forward(self, x: Tensor, attention: str = "exact", degree: int = 4) -> Tensor:
        return self.model(x, self.prompt.embedding.weight, attention, degree)


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def fit(module: nn.Module, x: Tensor, y: Tensor, steps: int = 1000, lr: float = 0.05) -> list[float]:
    """Full-batch Adam on the mean squared error over the module's trainable parameters, with a
    cosine learning-rate schedule; returns the loss per step."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("fit got a module with no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        loss = (module(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def relative_error(pred: Tensor, target: Tensor) -> float:
    """``|| pred - target ||_F / || target - mean(target) ||_F`` (1 = as bad as the mean output)."""
    pred, target = pred.detach(), target.detach()
    centered = target - target.mean(dim=0, keepdim=True)
    return float((pred - target).norm() / centered.norm())


def worst_pair_error(pred: Tensor, target: Tensor) -> float:
    """``max_n RMS(pred_n - target_n)``: memorization to tolerance eps means this is <= eps."""
    return float((pred.detach() - target.detach()).pow(2).flatten(1).mean(dim=1).sqrt().max())


def prompt_qkv(model: OneLayerTransformer, x: Tensor, prompt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The attention's ``Q, K, V`` on ``[P, X + E_pos]`` (the prompt-induced queries and keys), each
    ``[B, m + L, d]``."""
    z = model.inputs(x, prompt)
    return model.q_proj(z), model.k_proj(z), model.v_proj(z)


def entry_scale(q: Tensor, k: Tensor) -> float:
    """``max |entry|`` of ``s^{1/2} Q`` and ``s^{1/2} K`` (``s = 1 / sqrt(d)``): Alman & Song's bound B
    on the entries, with the scores ``s Q K^T`` the product of the two scaled matrices."""
    root = q.shape[-1] ** -0.25
    return float(torch.cat([q, k], dim=-2).abs().max() * root)
