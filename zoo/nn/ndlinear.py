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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ConfigError, ShapeError

INITS = ("dense", "reference")


def _cheapest_order(dims: Sequence[int], hidden: Sequence[int]) -> tuple[int, ...]:
    """Order of modes with the fewest multiply-adds: applying mode k to a tensor of ``size``
    elements costs ``size * h_k`` and changes the size by ``h_k / d_k``."""
    def cost(order: Sequence[int]) -> int:
        size, total = math.prod(dims), 0
        for k in order:
            total += size * hidden[k]
            size = size // dims[k] * hidden[k]
        return total

    return min(itertools.permutations(range(len(dims))), key=cost)


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
        # modes that are learned scalars (1 -> 1) fold into a scale; the others are applied as maps
        self._scalar_modes = [k for k in range(len(input_dims)) if input_dims[k] == hidden_size[k] == 1]
        maps = [k for k in range(len(input_dims)) if k not in self._scalar_modes]
        order = _cheapest_order([input_dims[k] for k in maps], [hidden_size[k] for k in maps])
        self._order = [maps[i] for i in order]
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
        lead = x.shape[:-n]
        dims = list(self.input_dims)
        scale = None
        for k in self._scalar_modes:
            scale = self.weights[k].view(()) if scale is None else scale * self.weights[k].view(())
        y = x.reshape(-1, *dims)
        batch = y.shape[0]
        for i, k in enumerate(self._order):
            weight = self.weights[k] if (scale is None or i > 0) else self.weights[k] * scale
            before, after = batch * math.prod(dims[:k]), math.prod(dims[k + 1:])
            if after == 1:
                y = F.linear(y.reshape(before, dims[k]), weight)
            else:
                y = torch.matmul(weight, y.reshape(before, dims[k], after))
            dims[k] = self.hidden_size[k]
        if not self._order and scale is not None:
            y = y * scale
        y = y.reshape(*lead, *self.hidden_size)
        bias = self.effective_bias()
        return y if bias is None else y + bias

    def extra_repr(self) -> str:
        return (f"input_dims={self.input_dims}, hidden_size={self.hidden_size}, "
                f"bias={self.biases is not None}, transform_outer={self.transform_outer}")
