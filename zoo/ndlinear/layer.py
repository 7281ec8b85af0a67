"""NdLinear (Reneau, Hu et al., 2025, "NdLinear Is All You Need for Representation Learning").

One linear map per mode of a tensor ``X`` of shape ``[..., d_1, ..., d_n]``:

    Y = X x_1 W_1 x_2 W_2 ... x_n W_n + B_eff,        W_k in R^{h_k x d_k}        (paper, Eq. 1)

with ``sum_k (d_k h_k + h_k)`` parameters instead of ``prod(d) prod(h)``. Without biases this is
``kron(W_1, ..., W_n)`` acting on the row-major flattened tensor. The reference implementation
adds each mode's bias right after that mode's map, so a bias is transformed by the maps applied
after it; in closed form

    B_eff = sum_k  1 (x) ... (x) b_k (x) (W_j 1) (x) ...        (row sums of every later map j)

broadcast over the modes before ``k`` (the map of an earlier mode sends a constant to its row
sums as well, but an earlier mode's bias has not been added yet). Only ``B_eff`` depends on the
order the reference applies the modes in (``transform_outer``); the maps themselves commute.

This implementation, unlike the reference package:

- applies the maps in the order that costs the fewest multiply-adds (chosen once, at init) with
  one matmul per mode and no transposes or ``.contiguous()`` copies: mode ``k`` of a contiguous
  ``[P, d_k, Q]`` view is ``W_k @ x`` (a GEMM over the batch of ``P``), the last mode is
  ``x @ W^T``;
- adds the precomputed ``B_eff`` once instead of a bias per mode;
- folds modes with ``d_k = h_k = 1`` (learned scalars) into the scale of the other maps and the
  bias, so ``NdLinear((d, 1), (h, 1))`` costs one ``nn.Linear``;
- takes any number of leading dimensions, an optional bias, ``device``/``dtype``, and an init
  that keeps the output scale of a dense layer whatever the number of modes (below).

Init: ``init="dense"`` (default) draws each ``W_k`` from ``U(-a_k, a_k)`` with
``a_k^2 = 3 * (1/3)^(1/n) / d_k``, so the product of the per-mode variances equals that of
``nn.Linear(prod(d), prod(h))`` under PyTorch's default init (``1 / (3 prod(d))`` per entry
of the Kronecker product): unit-variance input gives the same output std as a dense layer,
for any ``n``; biases start at zero. ``init="reference"`` reproduces the reference package
(``nn.Linear`` default init per mode, whose output std shrinks by ``sqrt(3)`` per extra mode).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError

INITS = ("dense", "reference")


# Cost model, in multiply-adds per sample, fitted to forward+backward timings of every plan of the
# benchmark shapes on a 2-core x86 CPU (benchmarks/ndlinear/layer.py): copies and per-mode bias
# passes cost far more than their arithmetic, and a batched GEMM with few output columns runs slowly.
KRON_MAX = 4096  # trailing modes whose Kronecker product has at most this many entries may merge
COPY_COST = 128  # copying one element (moving a mode to the end, or the final permutation)
PASS_COST = 2  # a GEMM reading or writing one element
SMALL_GEMM = 128  # a batched GEMM with Q output columns costs (1 + SMALL_GEMM / Q) per multiply-add
UNFUSED_BIAS_COST = 48  # per output element, when the biases cannot be added inside the GEMMs


@dataclass(frozen=True)
class Step:
    """Apply the map of ``modes`` (several: their Kronecker product) to a contiguous tensor viewed
    as ``[rows, size, after]``. ``move`` first transposes the block to the last position (one
    copy); then a block in the last position is one GEMM (``F.linear``), any other a batched
    GEMM over ``rows`` (``torch.bmm``) that keeps the layout."""

    modes: tuple[int, ...]
    move: bool
    before: int  # product of the physical sizes in front of the block (without the batch)
    size: int
    after: int  # product of the physical sizes behind the block


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    physical: tuple[int, ...]  # the mode order the steps leave behind
    fused_bias: bool  # add each mode's bias in its own step (the reference's order, no merged blocks)


def plan(dims: Sequence[int], hidden: Sequence[int], reference_order: Sequence[int]) -> Plan:
    """The cheapest way to apply the maps of the non-scalar modes under the cost model above.

    Tries every order of the modes, with and without merging a trailing block of small modes into
    one Kronecker-product map, and for every step both a GEMM in place and a copy that moves the
    mode last first. Biases fuse into the GEMMs only in the reference's order without merged
    blocks or scalar modes; otherwise ``B_eff`` is added at the end.
    """
    modes = [k for k in range(len(dims)) if not dims[k] == hidden[k] == 1]
    blocks: list[tuple[int, ...]] = [()]
    for start in range(len(modes) - 1):
        if math.prod(dims[k] * hidden[k] for k in modes[start:]) <= KRON_MAX:
            blocks.append(tuple(modes[start:]))
            break
    best: tuple[float, Plan] | None = None
    for block in blocks:
        units = [(k,) for k in modes if k not in block] + ([block] if block else [])
        for order in itertools.permutations(units):
            for moves in itertools.product((False, True), repeat=len(order)):
                candidate = _cost(order, moves, dims, hidden, modes)
                if candidate is None:
                    continue
                cost, steps, physical = candidate
                fused = not block and len(modes) == len(dims) and [u[0] for u in order] == list(reference_order)
                if physical != modes:
                    cost += COPY_COST * math.prod(hidden)
                if not fused:
                    cost += UNFUSED_BIAS_COST * math.prod(hidden)
                if best is None or cost < best[0]:
                    best = (cost, Plan(tuple(steps), tuple(physical), fused))
    assert best is not None
    return best[1]


def _cost(order, moves, dims, hidden, modes) -> tuple[float, list[Step], list[int]] | None:
    size, physical, cost, steps = list(dims), list(modes), 0.0, []
    for unit, move in zip(order, moves):
        position = physical.index(unit[0])
        before = math.prod(size[k] for k in physical[:position])
        after = math.prod(size[k] for k in physical[position + len(unit):])
        if move and after == 1:
            return None  # already last: nothing to move
        d, h = math.prod(size[k] for k in unit), math.prod(hidden[k] for k in unit)
        macs, elements = before * d * after * h, before * (d + h) * after
        if move:
            cost += COPY_COST * before * d * after + macs + PASS_COST * elements
            physical = [k for k in physical if k not in unit] + list(unit)
        else:
            cost += (macs * (1 + SMALL_GEMM / after) if after > 1 else macs) + PASS_COST * elements
        steps.append(Step(unit, move, before, d, after))
        for k in unit:
            size[k] = hidden[k]
    return cost, steps, physical


class NdLinear(nn.Module):
    """Mode-wise linear map of the trailing ``len(input_dims)`` dimensions.

    Args:
        input_dims: sizes ``(d_1, ..., d_n)`` of the trailing dimensions of the input.
        hidden_size: output sizes ``(h_1, ..., h_n)``.
        bias: learn one bias vector per mode (combined into ``B_eff``, see the module docstring).
        transform_outer: the reference's mode order (first mode first if True); it only changes
            how the per-mode biases combine.
        init: ``dense`` (output scale of a dense layer) or ``reference`` (the reference package).
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        hidden_size: Sequence[int],
        bias: bool = True,
        transform_outer: bool = True,
        init: str = "dense",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        input_dims, hidden_size = tuple(int(d) for d in input_dims), tuple(int(h) for h in hidden_size)
        if len(input_dims) != len(hidden_size) or not input_dims:
            raise ConfigError(
                f"NdLinear: input_dims {input_dims} and hidden_size {hidden_size} must have the same, nonzero length"
            )
        if min(input_dims + hidden_size) < 1:
            raise ConfigError(f"NdLinear: sizes must be >= 1, got input_dims {input_dims}, hidden_size {hidden_size}")
        if init not in INITS:
            raise ConfigError(f"NdLinear: init must be one of {INITS}, got {init!r}")
        self.input_dims, self.hidden_size = input_dims, hidden_size
        self.transform_outer = transform_outer
        factory = {"device": device, "dtype": dtype}
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(h, d, **factory)) for d, h in zip(input_dims, hidden_size))
        self.biases = (
            nn.ParameterList(nn.Parameter(torch.empty(h, **factory)) for h in hidden_size) if bias else None
        )
        # modes that are learned scalars (1 -> 1) fold into a scale; the others follow the plan
        self._scalar_modes = [k for k in range(len(input_dims)) if input_dims[k] == hidden_size[k] == 1]
        reference_order = range(len(input_dims)) if transform_outer else reversed(range(len(input_dims)))
        self.plan = plan(input_dims, hidden_size, list(reference_order))
        maps = [k for k in range(len(input_dims)) if k not in self._scalar_modes]
        physical = list(self.plan.physical)
        # the steps may leave the modes in another physical order: the permutation back
        self._unpermute = None if physical == maps else [0] + [1 + physical.index(k) for k in maps]
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "dense") -> None:
        n = len(self.input_dims)
        with torch.no_grad():
            for k, weight in enumerate(self.weights):
                d = self.input_dims[k]
                bound = 1 / math.sqrt(d) if init == "reference" else math.sqrt(3 * (1 / 3) ** (1 / n) / d)
                weight.uniform_(-bound, bound)
                if self.biases is not None:
                    if init == "reference":
                        self.biases[k].uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d))
                    else:
                        self.biases[k].zero_()

    # -- the reference package ---------------------------------------------------------------
    @classmethod
    def from_reference(cls, module: nn.Module, **kwargs) -> NdLinear:
        """An ``NdLinear`` equal (to float rounding) to a reference ``ndlinear.NdLinear`` module."""
        layer = cls(module.input_dims, module.hidden_size, transform_outer=module.transform_outer, **kwargs)
        layer.load_reference_state_dict(module.state_dict())
        return layer

    def load_reference_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load ``align_layers.{k}.weight`` / ``.bias`` from a reference state_dict."""
        expected = {f"align_layers.{k}.{p}" for k in range(len(self.input_dims)) for p in ("weight", "bias")}
        if set(state_dict) != expected:
            raise ConfigError(f"NdLinear: reference state_dict keys {sorted(state_dict)} != expected {sorted(expected)}")
        if self.biases is None:
            raise ConfigError("NdLinear: the reference layer has biases; build this one with bias=True")
        with torch.no_grad():
            for k in range(len(self.input_dims)):
                self.weights[k].copy_(state_dict[f"align_layers.{k}.weight"])
                self.biases[k].copy_(state_dict[f"align_layers.{k}.bias"])

    # -- forward -----------------------------------------------------------------------------
    def effective_bias(self) -> Tensor | None:
        """``B_eff`` of shape ``hidden_size`` (module docstring), or None without biases."""
        if self.biases is None:
            return None
        n = len(self.input_dims)
        applied = range(n) if self.transform_outer else reversed(range(n))
        row_sums = [w.sum(dim=1) for w in self.weights]
        total, later = None, []
        for k in reversed(list(applied)):  # walk back from the last applied mode
            shape = [1] * n
            shape[k] = self.hidden_size[k]
            term = self.biases[k].view(shape)
            for j in later:
                shape = [1] * n
                shape[j] = self.hidden_size[j]
                term = term * row_sums[j].view(shape)
            total = term if total is None else total + term
            later.append(k)
        return total

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.input_dims)
        if x.dim() < n or tuple(x.shape[-n:]) != self.input_dims:
            raise ShapeError(
                f"NdLinear: input must end with dims {list(self.input_dims)}, got shape {list(x.shape)}"
            )
        lead, steps = x.shape[:-n], self.plan.steps
        batch = math.prod(lead)
        y = x.reshape(batch, math.prod(self.input_dims))
        scale = None
        for k in self._scalar_modes:
            scale = self.weights[k].view(()) if scale is None else scale * self.weights[k].view(())
        fused = self.biases is not None and self.plan.fused_bias
        bias = None if fused else self.effective_bias()
        for i, step in enumerate(steps):
            weight = self.weights[step.modes[0]]
            for k in step.modes[1:]:
                weight = torch.kron(weight, self.weights[k])
            if i == 0 and scale is not None:
                weight = weight * scale
            step_bias = self.biases[step.modes[0]] if fused else None
            if len(steps) == 1 and bias is not None and bias.numel() == weight.shape[0]:
                step_bias, bias = bias.reshape(-1), None  # a single map: B_eff is its bias
            rows = batch * step.before
            if step.move or step.after == 1:
                if step.move:
                    y = y.view(rows, step.size, step.after).transpose(1, 2)
                y = F.linear(y.reshape(rows * step.after, step.size), weight, step_bias)
            else:
                y = y.view(rows, step.size, step.after)
                expanded = weight.expand(rows, *weight.shape)  # a true batched GEMM; matmul would copy
                y = torch.bmm(expanded, y) if step_bias is None else torch.baddbmm(step_bias[:, None], expanded, y)
        if not steps and scale is not None:
            y = y * scale
        if self._unpermute is not None:  # back to logical order (elementwise ops would keep the permuted layout)
            sizes = [self.hidden_size[k] for k in self.plan.physical]
            y = y.view(batch, *sizes).permute(*self._unpermute).contiguous()
        if bias is not None:
            y = y.reshape(batch, *self.hidden_size) + bias
        return y.reshape(*lead, *self.hidden_size)

    def extra_repr(self) -> str:
        return (f"input_dims={self.input_dims}, hidden_size={self.hidden_size}, "
                f"bias={self.biases is not None}, transform_outer={self.transform_outer}")
