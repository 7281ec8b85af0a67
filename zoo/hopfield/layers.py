"""Hopfield layers: ``Hopfield``, ``HopfieldPooling`` and ``HopfieldLayer`` (Ramsauer et al., 2021,
"Hopfield Networks is All You Need"; sparse separations: Hu et al., 2023; the API of ``hflayers``).

A Hopfield layer associates state patterns ``R [L, d_r]`` (queries) with stored patterns
``Y [S, d_y]`` (memories) and returns pattern projections ``V_in [S, d_v]`` weighted by that
association. The equations below are numbered here, not in the paper. Per batch element and
head ``h``:

    Q = LN(R) W_Q^h,   K = LN(Y) W_K^h,   V = LN(V_in) W_V^h                            (1)
    P = Sep(beta Q K^T + M)                                                              (2)
    Z = concat_h(Dropout(P) V) W_O                                                       (3)

``LN`` is a LayerNorm (``normalize_*``). A part declared ``*_as_static`` skips its projection:
its input, split into ``num_heads`` equal slices, is used as is. ``Sep`` is softmax, sparsemax,
1.5-entmax or alpha-entmax (``zoo.hopfield.retrieval.separate``); a learned alpha is
``1 + sigmoid(theta)``. ``beta`` is ``scaling``, by default ``1 / sqrt(width of Q per head)``.
``M`` is ``-inf`` where the padding mask ``[B, S]`` or the association mask ``[L, S]``/``[B, L, S]``
is True, so the forbidden stored patterns get exactly zero weight under every ``Sep`` (each
handles ``-inf``); a query with every stored pattern forbidden gets ``P = 0`` and retrieves zero.

Update steps run the retrieval dynamics of ``zoo.hopfield.retrieval.retrieve`` in the key space before
the final association. With ``P_t = Sep(beta Q_t K^T + M)`` and ``T = update_steps_max``:

    Q_{t+1} = P_t K,   t = 0, 1, ..., T - 1                                             (4)

stopping early for a (batch element, head) pair, which is one Hopfield network with its own
memories, once the update would move none of its queries by ``update_steps_eps`` or more
(Euclidean norm); that pair then keeps ``Q_t``. ``P`` in (3) is the association of the final
queries, so a layer with ``T`` update steps evaluates ``Sep`` at most ``T + 1`` times. Dropout
acts on the final ``P`` only.

Pure retrieval: with all three parts static, no LayerNorm, no output projection, one head and
``V_in = Y``, (1)-(4) reduce to ``Z = retrieve(R, Y, beta, Sep, steps=T + 1, tol=eps)``, and the
layer has no parameters (but a learned alpha).

``HopfieldPooling`` uses ``quantity`` learned state patterns as the queries and the input bag as
stored patterns and projections. ``HopfieldLayer`` is a learned lookup table: the input is the
state, the stored patterns (``lookup_weights``) and projections (``lookup_targets``) are learned.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError
from zoo.hopfield.retrieval import SEPARATIONS, separate

Patterns = Tensor | tuple[Tensor, Tensor, Tensor]


def _needed(value: int | None, what: str) -> int:
    if value is None:
        raise ConfigError(f"Hopfield: {what}, got None")
    return value


def _static_head(name: str, width: int | None, heads: int) -> int | None:
    """Width per head of a static part (unknown until forward when ``width`` is None)."""
    if width is None:
        return None
    if width % heads:
        raise ConfigError(f"Hopfield: static {name}={width} must be divisible by num_heads={heads}")
    return width // heads


def _check_mask(name: str, mask: Tensor, shapes: list[list[int]]) -> None:
    if mask.dtype != torch.bool:
        raise ConfigError(f"Hopfield: {name} must be a bool tensor (True = ignore), got {mask.dtype}")
    if list(mask.shape) not in shapes:
        raise ShapeError(f"Hopfield: {name} must have shape {' or '.join(map(str, shapes))}, got {list(mask.shape)}")


def _rows(count: int, width: int) -> Tensor:
    """``count`` random patterns of norm about 1."""
    return torch.randn(count, width) / math.sqrt(width)


class Hopfield(nn.Module):
    """Hopfield association of state patterns with stored patterns (module docstring, (1)-(4)).

    Args:
        input_size: width ``d_r`` of the state patterns (and the default of the other widths).
        hidden_size: width per head of ``Q`` and ``K`` (default: the static side's width per head,
            else ``input_size``).
        output_size: width of the output projection (default ``input_size``).
        pattern_size: width per head of ``V`` (default ``hidden_size``).
        num_heads: number of independent associations.
        scaling: ``beta`` (default ``1 / sqrt(width of Q per head)``).
        update_steps_max: update steps (4) before the final association; 0 = plain attention.
        update_steps_eps: a network stops updating once no query would move this far.
        separation: one of ``SEPARATIONS``; ``alpha`` is used by ``entmax``.
        learn_alpha: learn ``alpha = 1 + sigmoid(theta)``, starting at ``alpha`` (needs ``entmax``).
        normalize_*: LayerNorm of the stored / state / projection input.
        *_as_static: use that input as is (split into heads) instead of projecting it.
        disable_out_projection: return the concatenated heads without ``W_O``.
        stored_pattern_size, pattern_projection_size: input widths ``d_y``, ``d_v`` (default ``input_size``).
        dropout: dropout probability on ``P``.
        bias: biases in the projections.
    """

    def __init__(
        self,
        input_size: int | None = None,
        hidden_size: int | None = None,
        output_size: int | None = None,
        pattern_size: int | None = None,
        num_heads: int = 1,
        scaling: float | None = None,
        update_steps_max: int = 0,
        update_steps_eps: float = 1e-4,
        separation: str = "softmax",
        alpha: float = 1.5,
        learn_alpha: bool = False,
        normalize_stored_pattern: bool = True,
        normalize_state_pattern: bool = True,
        normalize_pattern_projection: bool = True,
        stored_pattern_as_static: bool = False,
        state_pattern_as_static: bool = False,
        pattern_projection_as_static: bool = False,
        disable_out_projection: bool = False,
        stored_pattern_size: int | None = None,
        pattern_projection_size: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        sizes = {"input_size": input_size, "hidden_size": hidden_size, "output_size": output_size,
                 "pattern_size": pattern_size, "stored_pattern_size": stored_pattern_size,
                 "pattern_projection_size": pattern_projection_size}
        for name, value in sizes.items():
            if value is not None and value < 1:
                raise ConfigError(f"Hopfield: {name} must be >= 1, got {value}")
        if num_heads < 1:
            raise ConfigError(f"Hopfield: num_heads must be >= 1, got {num_heads}")
        if scaling is not None and not scaling > 0:
            raise ConfigError(f"Hopfield: scaling must be > 0, got {scaling}")
        if separation not in SEPARATIONS:
            raise ConfigError(f"Hopfield: separation must be one of {SEPARATIONS}, got {separation!r}")
        if not 1 <= alpha <= 2:
            raise ConfigError(f"Hopfield: alpha must lie in [1, 2], got {alpha}")
        if learn_alpha and (separation != "entmax" or not 1 < alpha < 2):
            raise ConfigError(f"Hopfield: learn_alpha needs separation='entmax' and alpha in (1, 2), "
                              f"got separation={separation!r}, alpha={alpha}")
        if update_steps_max < 0:
            raise ConfigError(f"Hopfield: update_steps_max must be >= 0, got {update_steps_max}")
        if update_steps_eps < 0:
            raise ConfigError(f"Hopfield: update_steps_eps must be >= 0, got {update_steps_eps}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"Hopfield: dropout must lie in [0, 1), got {dropout}")
        if disable_out_projection and output_size is not None:
            raise ConfigError(f"Hopfield: output_size={output_size} needs the output projection, "
                              "got disable_out_projection=True")
        stored_size = stored_pattern_size if stored_pattern_size is not None else input_size
        projection_size = pattern_projection_size if pattern_projection_size is not None else input_size
        self.widths = {"stored": stored_size, "state": input_size, "pattern projection": projection_size}

        # widths per head: Q and K must agree; a static side fixes them
        q_head = _static_head("input_size", input_size, num_heads) if state_pattern_as_static else None
        k_head = _static_head("stored_pattern_size", stored_size, num_heads) if stored_pattern_as_static else None
        if q_head is not None and k_head is not None and q_head != k_head:
            raise ConfigError(f"Hopfield: static state and stored patterns need the same width, "
                              f"got input_size={input_size}, stored_pattern_size={stored_size}")
        static = q_head if q_head is not None else k_head
        if hidden_size is not None and static is not None and hidden_size != static:
            raise ConfigError(f"Hopfield: hidden_size={hidden_size} must equal the static patterns' "
                              f"width per head, {static}")
        hidden = hidden_size if hidden_size is not None else static if static is not None else input_size
        pattern = pattern_size if pattern_size is not None else hidden

        args = {"stored": "stored_pattern_size or input_size", "state": "input_size",
                "pattern projection": "pattern_projection_size or input_size"}

        def norm(part: str, on: bool) -> nn.LayerNorm | None:
            return nn.LayerNorm(_needed(self.widths[part], f"the {part} LayerNorm needs {args[part]}")) if on else None

        def project(part: str, width: int | None, width_arg: str, as_static: bool) -> nn.Linear | None:
            if as_static:
                return None
            return nn.Linear(_needed(self.widths[part], f"the {part} projection needs {args[part]}"),
                             num_heads * _needed(width, f"the {part} projection needs {width_arg}"), bias=bias)

        self.norm_stored = norm("stored", normalize_stored_pattern)
        self.norm_state = norm("state", normalize_state_pattern)
        self.norm_projection = norm("pattern projection", normalize_pattern_projection)
        self.key = project("stored", hidden, "hidden_size or input_size", stored_pattern_as_static)
        self.query = project("state", hidden, "hidden_size or input_size", state_pattern_as_static)
        self.value = project("pattern projection", pattern, "pattern_size or hidden_size", pattern_projection_as_static)
        if pattern_projection_as_static:
            _static_head("pattern_projection_size", projection_size, num_heads)
        heads_width = projection_size if pattern_projection_as_static else num_heads * pattern
        out_size = output_size if output_size is not None else input_size
        self.out = None if disable_out_projection else nn.Linear(
            _needed(heads_width, "the output projection needs pattern_projection_size or input_size"),
            _needed(out_size, "the output projection needs output_size or input_size"), bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.theta = nn.Parameter(torch.tensor(math.log((alpha - 1) / (2 - alpha)))) if learn_alpha else None
        self.num_heads, self.scaling, self.separation, self._alpha = num_heads, scaling, separation, alpha
        self.update_steps_max, self.update_steps_eps = update_steps_max, update_steps_eps

    @property
    def alpha(self) -> float | Tensor:
        """The entmax ``alpha``: ``1 + sigmoid(theta)`` when learned."""
        return self._alpha if self.theta is None else 1 + torch.sigmoid(self.theta)

    def forward(self, input: Patterns, stored_pattern_padding_mask: Tensor | None = None,
                association_mask: Tensor | None = None) -> Tensor:
        """``input``: one tensor ``[B, N, d]`` (stored = state = projection) or a tuple
        ``(stored [B, S, d_y], state [B, L, d_r], projection [B, S, d_v])``. Returns ``[B, L, out]``."""
        p, v = self._associate(input, stored_pattern_padding_mask, association_mask)
        z = (self.dropout(p) @ v).transpose(1, 2).flatten(2)
        return z if self.out is None else self.out(z)

    def association(self, input: Patterns, stored_pattern_padding_mask: Tensor | None = None,
                    association_mask: Tensor | None = None) -> Tensor:
        """The final association ``P`` of (2), ``[B, num_heads, L, S]`` (before dropout)."""
        return self._associate(input, stored_pattern_padding_mask, association_mask)[0]

    def _associate(self, input: Patterns, padding: Tensor | None, association: Tensor | None) -> tuple[Tensor, Tensor]:
        stored, state, projection = self._unpack(input)
        q = self._heads(state, self.norm_state, self.query, "state")
        k = self._heads(stored, self.norm_stored, self.key, "stored")
        v = self._heads(projection, self.norm_projection, self.value, "pattern projection")
        if q.shape[-1] != k.shape[-1]:
            raise ShapeError(f"Hopfield: state and stored patterns need the same width per head, "
                             f"got {q.shape[-1]} and {k.shape[-1]}")
        beta = self.scaling if self.scaling is not None else k.shape[-1] ** -0.5
        mask = self._mask(padding, association, len(stored), state.shape[1], stored.shape[1])
        p = self._separate(beta * q @ k.transpose(-1, -2), mask)
        active = torch.ones(q.shape[:2] + (1, 1), dtype=torch.bool, device=q.device)
        for _ in range(self.update_steps_max):  # (4), one network per (batch element, head)
            updated = p @ k
            active = active & ((updated - q).norm(dim=-1).amax(dim=-1)[..., None, None] >= self.update_steps_eps)
            if not active.any():
                break
            q = torch.where(active, updated, q)
            p = self._separate(beta * q @ k.transpose(-1, -2), mask)
        return p, v

    def _separate(self, scores: Tensor, mask: tuple[Tensor, Tensor] | None) -> Tensor:
        if mask is None:
            return separate(scores, self.separation, self.alpha)
        blocked, empty = mask
        p = separate(scores.masked_fill(blocked, -math.inf), self.separation, self.alpha)
        return p.masked_fill(empty, 0)

    def _unpack(self, input: Patterns) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(input, Tensor):
            input = (input, input, input)
        if not isinstance(input, (tuple, list)) or len(input) != 3:
            got = f"{type(input).__name__} of length {len(input)}" if isinstance(input, (tuple, list)) else repr(input)
            raise ShapeError(f"Hopfield: input must be a tensor [B, N, d] or a (stored, state, projection) tuple, "
                             f"got {got}")
        for (name, width), x in zip(self.widths.items(), input):
            if x.dim() != 3 or (width is not None and x.shape[-1] != width):
                expected = f"[B, N, {width if width is not None else 'd'}]"
                raise ShapeError(f"Hopfield: {name} patterns must have shape {expected}, got {list(x.shape)}")
        stored, state, projection = input
        if not len(stored) == len(state) == len(projection) or stored.shape[1] != projection.shape[1]:
            raise ShapeError(f"Hopfield: need stored [B, S, .], state [B, L, .] and projection [B, S, .], got "
                             f"{list(stored.shape)}, {list(state.shape)} and {list(projection.shape)}")
        return stored, state, projection

    def keys(self, stored: Tensor) -> Tensor:
        """The stored patterns in key space, ``K = LN(Y) W_K`` of (1) with the heads side by side:
        ``[B, S, d_y]`` -> ``[B, S, heads * hidden]`` (U-Hop+ reads it as the feature map ``Phi(Y)``)."""
        return self._project(stored, self.norm_stored, self.key)

    @staticmethod
    def _project(x: Tensor, norm: nn.LayerNorm | None, linear: nn.Linear | None) -> Tensor:
        x = x if norm is None else norm(x)
        return x if linear is None else linear(x)

    def _heads(self, x: Tensor, norm: nn.LayerNorm | None, linear: nn.Linear | None, name: str) -> Tensor:
        """``[B, N, d]`` -> LayerNorm -> projection -> ``[B, heads, N, d / heads]``."""
        x = self._project(x, norm, linear)
        if x.shape[-1] % self.num_heads:
            raise ShapeError(f"Hopfield: static {name} width {x.shape[-1]} must be divisible by "
                             f"num_heads={self.num_heads}")
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    @staticmethod
    def _mask(padding: Tensor | None, association: Tensor | None, b: int, l: int, s: int
              ) -> tuple[Tensor, Tensor] | None:
        """``(blocked, empty)``: the scores set to ``-inf`` ``[B, 1, L, S]`` and the queries with
        every stored pattern forbidden ``[B, 1, L, 1]`` (those get ``P = 0``), or None without masks."""
        masks = []
        if padding is not None:
            _check_mask("stored_pattern_padding_mask", padding, [[b, s]])
            masks.append(padding[:, None, None, :])
        if association is not None:
            _check_mask("association_mask", association, [[l, s], [b, l, s]])
            masks.append(association.reshape(-1, 1, l, s))
        if not masks:
            return None
        mask = (masks[0] if len(masks) == 1 else masks[0] | masks[1]).expand(b, 1, l, s)
        empty = mask.all(dim=-1, keepdim=True)
        return mask & ~empty, empty

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, separation={self.separation!r}, scaling={self.scaling}, "
                f"update_steps_max={self.update_steps_max}, update_steps_eps={self.update_steps_eps}")


class HopfieldPooling(nn.Module):
    """``quantity`` learned state patterns ``[quantity, input_size]`` query the input bag
    ``[B, N, input_size]`` (stored patterns and projections); returns ``[B, quantity * out]``.
    ``kwargs`` are any other ``Hopfield`` arguments; the padding mask ``[B, N]`` marks the padding
    of bags of different sizes."""

    def __init__(self, input_size: int, quantity: int = 1, **kwargs: Any) -> None:
        super().__init__()
        if quantity < 1:
            raise ConfigError(f"HopfieldPooling: quantity must be >= 1, got {quantity}")
        self.hopfield = Hopfield(input_size=input_size, **kwargs)
        self.query = nn.Parameter(_rows(quantity, input_size))

    def forward(self, input: Tensor, stored_pattern_padding_mask: Tensor | None = None,
                association_mask: Tensor | None = None) -> Tensor:
        return self.hopfield(self._patterns(input), stored_pattern_padding_mask, association_mask).flatten(1)

    def association(self, input: Tensor, stored_pattern_padding_mask: Tensor | None = None,
                    association_mask: Tensor | None = None) -> Tensor:
        """``P`` of the learned queries, ``[B, num_heads, quantity, N]``."""
        return self.hopfield.association(self._patterns(input), stored_pattern_padding_mask, association_mask)

    def _patterns(self, input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if input.dim() != 3:
            raise ShapeError(f"HopfieldPooling: input must have shape [B, N, d], got {list(input.shape)}")
        return input, self.query.expand(len(input), -1, -1), input


class HopfieldLayer(nn.Module):
    """A learned lookup: the input ``[B, L, input_size]`` is the state, ``lookup_weights
    [quantity, input_size]`` the stored patterns and ``lookup_targets [quantity, output_size or
    input_size]`` their projections; returns ``[B, L, out]``. ``kwargs`` are any other ``Hopfield``
    arguments (``output_size`` sets the targets' width and, unless disabled, the output projection's)."""

    def __init__(self, input_size: int, quantity: int = 1, output_size: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        if quantity < 1:
            raise ConfigError(f"HopfieldLayer: quantity must be >= 1, got {quantity}")
        targets = output_size if output_size is not None else input_size
        projected = None if kwargs.get("disable_out_projection") else output_size
        self.hopfield = Hopfield(input_size=input_size, output_size=projected, stored_pattern_size=input_size,
                                 pattern_projection_size=targets, **kwargs)
        self.lookup_weights = nn.Parameter(_rows(quantity, input_size))
        self.lookup_targets = nn.Parameter(_rows(quantity, targets))

    def forward(self, input: Tensor, association_mask: Tensor | None = None) -> Tensor:
        return self.hopfield(self._patterns(input), association_mask=association_mask)

    def association(self, input: Tensor, association_mask: Tensor | None = None) -> Tensor:
        """``P`` of the inputs over the lookup table, ``[B, num_heads, L, quantity]``."""
        return self.hopfield.association(self._patterns(input), association_mask=association_mask)

    def _patterns(self, input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if input.dim() != 3:
            raise ShapeError(f"HopfieldLayer: input must have shape [B, L, d], got {list(input.shape)}")
        b = len(input)
        return self.lookup_weights.expand(b, -1, -1), input, self.lookup_targets.expand(b, -1, -1)
