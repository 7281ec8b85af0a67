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
  that keeps the output scale of a dense layer whatever the number of modes (below);
- can instead choose the plan by measuring a few candidates on the first input of each shape,
  device and dtype (``set_autotune(True)`` / ``with autotuning():`` / ``NdLinear(..., autotune=True)``,
  off by default), as ``torch.backends.cudnn.benchmark`` does; the parameters are the same whatever
  the plan.

Init: ``init="dense"`` (default) draws each ``W_k`` from ``U(-a_k, a_k)`` with
``a_k^2 = 3 * (1/3)^(1/n) / d_k``, so the product of the per-mode variances equals that of
``nn.Linear(prod(d), prod(h))`` under PyTorch's default init (``1 / (3 prod(d))`` per entry
of the Kronecker product): unit-variance input gives the same output std as a dense layer,
for any ``n``; biases start at zero. ``init="reference"`` reproduces the reference package
(``nn.Linear`` default init per mode, whose output std shrinks by ``sqrt(3)`` per extra mode).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
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
    return candidate_plans(dims, hidden, reference_order)[0][1]


def candidate_plans(
    dims: Sequence[int], hidden: Sequence[int], reference_order: Sequence[int]
) -> list[tuple[float, Plan]]:
    """Every plan ``plan`` considers with its modelled cost, cheapest first (ties in enumeration
    order, so the first is ``plan``'s choice). All of them compute the same map from the same
    parameters; only the order of the GEMMs, the copies and where the biases are added differ."""
    modes = [k for k in range(len(dims)) if not dims[k] == hidden[k] == 1]
    blocks: list[tuple[int, ...]] = [()]
    for start in range(len(modes) - 1):
        if math.prod(dims[k] * hidden[k] for k in modes[start:]) <= KRON_MAX:
            blocks.append(tuple(modes[start:]))
            break
    plans: list[tuple[float, Plan]] = []
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
                plans.append((cost, Plan(tuple(steps), tuple(physical), fused)))
    assert plans
    return sorted(plans, key=lambda item: item[0])  # stable: equal costs keep the enumeration order


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


# -- plan selection by measurement (opt-in) ---------------------------------------------------
# The cost model above was fitted to a 2-core CPU; elsewhere (other CPUs, GPUs, bf16) another plan
# may be faster. With autotuning on, the first forward for a (layer shape, device type, dtypes,
# autocast, leading shape, gradient or not, CPU threads) key times ``tuning_candidates`` on that
# input and caches the fastest, like ``torch.backends.cudnn.benchmark``. Every plan applies the
# same parameters (stored as ``W_k`` of shape ``[h_k, d_k]`` whatever the plan), so state dicts
# do not depend on it; outputs differ from the cost model's plan only by float rounding.
AUTOTUNE_CANDIDATES = 8  # plans measured per key
AUTOTUNE_WARMUP = {"cuda": 3}  # untimed calls per plan (others: AUTOTUNE_WARMUP_DEFAULT)
AUTOTUNE_WARMUP_DEFAULT = 1
AUTOTUNE_REPEATS = 5  # rounds of one timed call per plan, median taken; fewer when calls are slow:
AUTOTUNE_SLOW_S = 0.1  # calls slower than this prune sooner and get rounds for AUTOTUNE_BUDGET_S a plan
AUTOTUNE_BUDGET_S = 1.0
# on these devices, measure on a leading slice of the batch of at most this many input elements: a
# full batch of tens of millions takes seconds a call on a CPU (a much smaller slice, 4M elements,
# changed the ranking for (1024, 3, 64, 64) -> (3, 32, 32) on the 2-core CPU, so not too small)
AUTOTUNE_MAX_ELEMENTS = {"cpu": 1 << 24}
AUTOTUNE_PRUNE = 1.5  # stop timing a plan once its fastest call took this many times the best median
AUTOTUNE_MARGIN = 0.05  # another plan replaces the cost model's only when this much faster

_AUTOTUNE = False
_PLAN_CACHE: dict[tuple, tuple[Plan, torch.dtype]] = {}  # key -> (plan, dtype of the cost model plan's output)


def set_autotune(enabled: bool) -> bool:
    """Turn autotuning on or off for every ``NdLinear`` built with ``autotune=None`` (the default);
    returns the previous setting. Off by default: the cost model's plan, as before."""
    global _AUTOTUNE
    previous, _AUTOTUNE = _AUTOTUNE, bool(enabled)
    return previous


def autotune_enabled() -> bool:
    return _AUTOTUNE


@contextlib.contextmanager
def autotuning(enabled: bool = True) -> Iterator[None]:
    """``with autotuning(): ...`` sets the module-level switch for the block."""
    previous = set_autotune(enabled)
    try:
        yield
    finally:
        set_autotune(previous)


def autotune_cache() -> dict[tuple, Plan]:
    """The process-wide cache of measured choices, key -> plan (a copy)."""
    return {key: chosen for key, (chosen, _) in _PLAN_CACHE.items()}


def clear_autotune_cache() -> None:
    _PLAN_CACHE.clear()


def tuning_candidates(dims: Sequence[int], hidden: Sequence[int], reference_order: Sequence[int],
                      limit: int = AUTOTUNE_CANDIDATES) -> list[Plan]:
    """The plans autotuning measures, at most ``limit``: the cost model's choice first, then the
    reference package's way (each mode moved last and mapped with one GEMM in the reference's order,
    biases fused), the next-cheapest plans, and the cheapest plan of every other order/grouping of
    the modes."""
    ranked = [p for _, p in candidate_plans(dims, hidden, reference_order)]
    modes = [k for k in range(len(dims)) if not dims[k] == hidden[k] == 1]
    order = [k for k in reference_order if k in modes]
    in_order = [p for p in ranked if [s.modes for s in p.steps] == [(k,) for k in order]]
    reference_like = max(in_order, key=lambda p: sum(s.move for s in p.steps), default=None)
    chosen = [ranked[0]] + ([reference_like] if reference_like is not None else []) + ranked[1:4]
    structures: set[tuple] = set()
    for candidate in ranked:  # the cheapest of each order and grouping
        structure = tuple(s.modes for s in candidate.steps)
        if structure not in structures:
            structures.add(structure)
            chosen.append(candidate)
    chosen += ranked
    unique = list(dict.fromkeys(chosen))
    return unique[:max(1, limit)]


def _tracing() -> bool:
    """Inside torch.compile / export / TorchScript: no timing there, the cost model's plan."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def _untimeable(device: torch.device) -> bool:
    """Timing needs synchronization, which a CUDA graph capture forbids; meta tensors have no time."""
    if device.type == "meta":
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on ``device_type``, None when autocast is off (or unknown there)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except RuntimeError:
        return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        synchronize = getattr(getattr(torch, device.type, None), "synchronize", None)
        if callable(synchronize):
            synchronize()


def _time_one(call: Callable[[], None], device: torch.device) -> float:
    """Seconds of one ``call``: CUDA events on the current stream for CUDA, ``time.perf_counter``
    otherwise (the device synchronized before and after)."""
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3
    _synchronize(device)
    start = time.perf_counter()
    call()
    _synchronize(device)
    return time.perf_counter() - start


def _time_candidates(calls: Sequence[Callable[[], None]], device: torch.device) -> list[tuple[float, float]]:
    """(median, fastest) seconds per call of each of ``calls`` (one per candidate plan), the first
    the cost model's. Each is warmed up (``AUTOTUNE_WARMUP`` calls), then all are timed in
    interleaved rounds, so that a burst of load on a shared machine hits them alike:
    ``AUTOTUNE_REPEATS`` rounds, fewer (``AUTOTUNE_BUDGET_S`` per plan, at least one) when a call
    takes over ``AUTOTUNE_SLOW_S``. A candidate stops being timed once its fastest call is
    ``AUTOTUNE_PRUNE`` times the best median (after one round when calls are slow, two otherwise),
    or at once when its warm-up alone was that much slower than the best's and slow; one that runs
    out of memory drops out (the cost model's re-raises)."""
    warmup = AUTOTUNE_WARMUP.get(device.type, AUTOTUNE_WARMUP_DEFAULT)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        warm = []
        for i, call in enumerate(calls):
            _synchronize(device)
            start = time.perf_counter()
            try:
                for _ in range(warmup):
                    call()
            except torch.OutOfMemoryError:
                if i == 0:  # the cost model's plan: forward would fail the same way
                    raise
                warm.append(math.inf)  # a plan with larger intermediates: out of the running
                continue
            _synchronize(device)
            warm.append((time.perf_counter() - start) / max(warmup, 1))
        slow = min(warm) > AUTOTUNE_SLOW_S
        alive = [i for i in range(len(calls))
                 if warm[i] < math.inf and not (slow and i > 0 and warm[i] > AUTOTUNE_PRUNE * min(warm))]
        times: list[list[float]] = [[] for _ in calls]
        rounds = max(1, min(AUTOTUNE_REPEATS, int(AUTOTUNE_BUDGET_S / min(warm)))) if slow else AUTOTUNE_REPEATS
        for round_ in range(rounds):
            for i in alive:
                times[i].append(_time_one(calls[i], device))
            if round_ >= (0 if slow else 1):
                best = min(statistics.median(times[i]) for i in alive)
                alive = [i for i in alive if i == 0 or min(times[i]) <= AUTOTUNE_PRUNE * best]
    return [(statistics.median(t), min(t)) if t else (warm[i], warm[i]) for i, t in enumerate(times)]


class NdLinear(nn.Module):
    """Mode-wise linear map of the trailing ``len(input_dims)`` dimensions.

    Args:
        input_dims: sizes ``(d_1, ..., d_n)`` of the trailing dimensions of the input.
        hidden_size: output sizes ``(h_1, ..., h_n)``.
        bias: learn one bias vector per mode (combined into ``B_eff``, see the module docstring).
        transform_outer: the reference's mode order (first mode first if True); it only changes
            how the per-mode biases combine.
        init: ``dense`` (output scale of a dense layer) or ``reference`` (the reference package).
        autotune: choose the plan by measurement (see ``set_autotune``): True or False for this
            layer, None (default) to follow the module-level switch, which is off by default.
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
        autotune: bool | None = None,
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
        self.autotune = autotune
        factory = {"device": device, "dtype": dtype}
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(h, d, **factory)) for d, h in zip(input_dims, hidden_size))
        self.biases = (
            nn.ParameterList(nn.Parameter(torch.empty(h, **factory)) for h in hidden_size) if bias else None
        )
        # modes that are learned scalars (1 -> 1) fold into a scale; the others follow the plan
        self._scalar_modes = [k for k in range(len(input_dims)) if input_dims[k] == hidden_size[k] == 1]
        reference_order = range(len(input_dims)) if transform_outer else reversed(range(len(input_dims)))
        self._reference_order = list(reference_order)
        self.plan = plan(input_dims, hidden_size, self._reference_order)  # the cost model's (autotune off)
        self._unpermutes: dict[Plan, list[int] | None] = {}
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

    def candidate_plans(self) -> list[Plan]:
        """Every plan of this layer's shape, the cost model's cheapest first (``self.plan``)."""
        return [p for _, p in candidate_plans(self.input_dims, self.hidden_size, self._reference_order)]

    def tuning_candidates(self, limit: int | None = None) -> list[Plan]:
        """The plans autotuning measures (``tuning_candidates``)."""
        return tuning_candidates(self.input_dims, self.hidden_size, self._reference_order,
                                 AUTOTUNE_CANDIDATES if limit is None else limit)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if (_AUTOTUNE if self.autotune is None else self.autotune) and not _tracing():
            chosen, dtype = self._tuned_plan(x)
            y = self._run_plan(x, chosen)
            # under autocast, plans that add B_eff at the end promote to the parameters' dtype: keep
            # the cost model plan's output dtype whatever the plan
            return y if dtype is None or y.dtype == dtype else y.to(dtype)
        return self._run_plan(x, self.plan)

    def plan_for(self, x: Tensor) -> Plan:
        """The plan ``forward(x)`` uses: ``self.plan`` (the cost model's) unless autotuning is on for
        this layer, where the measured choice for ``x``'s key (measuring it the first time). Under
        torch.compile, export, TorchScript or a CUDA graph capture: never measures."""
        if (_AUTOTUNE if self.autotune is None else self.autotune) and not _tracing():
            return self._tuned_plan(x)[0]
        return self.plan

    def _check_input(self, x: Tensor) -> None:
        n = len(self.input_dims)
        if x.dim() < n or tuple(x.shape[-n:]) != self.input_dims:
            raise ShapeError(
                f"NdLinear: input must end with dims {list(self.input_dims)}, got shape {list(x.shape)}"
            )

    def apply_plan(self, x: Tensor, plan: Plan) -> Tensor:
        """The layer's output computed with ``plan`` (any of ``candidate_plans()``; all give the same
        map from the same parameters, to float rounding)."""
        self._check_input(x)
        return self._run_plan(x, plan)

    def _run_plan(self, x: Tensor, plan: Plan) -> Tensor:
        n = len(self.input_dims)
        lead, steps = x.shape[:-n], plan.steps
        batch = math.prod(lead)
        y = x.reshape(batch, math.prod(self.input_dims))
        scale = None
        for k in self._scalar_modes:
            scale = self.weights[k].view(()) if scale is None else scale * self.weights[k].view(())
        fused = self.biases is not None and plan.fused_bias
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
        unpermute = self._unpermute(plan)
        if unpermute is not None:  # back to logical order (elementwise ops would keep the permuted layout)
            sizes = [self.hidden_size[k] for k in plan.physical]
            y = y.view(batch, *sizes).permute(*unpermute).contiguous()
        if bias is not None:
            y = y.reshape(batch, *self.hidden_size) + bias
        return y.reshape(*lead, *self.hidden_size)

    def _unpermute(self, plan: Plan) -> list[int] | None:
        """The permutation from the mode order ``plan`` leaves behind back to the logical one."""
        if plan not in self._unpermutes:
            maps = [k for k in range(len(self.input_dims)) if k not in self._scalar_modes]
            physical = list(plan.physical)
            self._unpermutes[plan] = None if physical == maps else [0] + [1 + physical.index(k) for k in maps]
        return self._unpermutes[plan]

    # -- autotuning --------------------------------------------------------------------------
    def _autotune_key(self, x: Tensor, grad: bool) -> tuple:
        device = x.device.type
        autocast = _autocast_dtype(device)
        threads = torch.get_num_threads() if device == "cpu" else None
        return (self.input_dims, self.hidden_size, self.transform_outer, self.biases is not None,
                device, x.dtype, self.weights._parameters["0"].dtype, autocast,
                tuple(x.shape[:-len(self.input_dims)]), grad, threads)

    def _tuned_plan(self, x: Tensor) -> tuple[Plan, torch.dtype | None]:
        """The plan for ``x``'s key and the dtype the cost model's plan returns (None: no cast needed)."""
        if x.numel() == 0 or _untimeable(x.device):
            return self.plan, None  # nothing to time, or no timing (synchronizing) allowed
        grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self._parameters_list()))
        key = self._autotune_key(x, grad)
        chosen = _PLAN_CACHE.get(key)
        if chosen is None:
            candidates = self.tuning_candidates()
            if len(candidates) == 1:
                return candidates[0], None  # nothing to choose
            with torch.no_grad():
                dtype = self._run_plan(x[(0,) * (x.dim() - len(self.input_dims))], self.plan).dtype
            sample = x.reshape(-1, *self.input_dims)
            limit = AUTOTUNE_MAX_ELEMENTS.get(x.device.type)
            if limit is not None and sample.numel() > limit:
                sample = sample[:max(1, limit // math.prod(self.input_dims))]
            chosen = _PLAN_CACHE[key] = (self._measure_plans(sample, candidates, grad, dtype), dtype)
        return chosen

    def _parameters_list(self) -> list[nn.Parameter]:
        # the ParameterLists' own dicts: iterating a ParameterList costs microseconds per entry
        biases = list(self.biases._parameters.values()) if self.biases is not None else []
        return list(self.weights._parameters.values()) + biases

    def _measure_plans(self, x: Tensor, candidates: list[Plan], grad: bool, dtype: torch.dtype) -> Plan:
        """The fastest of ``candidates`` on ``x`` (forward, plus backward when ``grad``; see
        ``_time_candidates``) by median time. The first (the cost model's) stays unless another is
        faster by more than ``AUTOTUNE_MARGIN`` in its median and in its fastest call alike: on a
        loaded machine a burst of waiting can shift a median, not every call."""
        upstream: list[Tensor] = []  # one upstream gradient for all the candidates (outputs can be large)
        calls = [self._timed_call(x, c, grad, dtype, upstream=upstream) for c in candidates]
        times = _time_candidates(calls, x.device)
        fastest = min(range(len(candidates)), key=lambda i: (times[i][0], i))
        clearly = all(times[fastest][j] < (1 - AUTOTUNE_MARGIN) * times[0][j] for j in (0, 1))
        return candidates[fastest] if clearly else candidates[0]

    def _timed_call(self, x: Tensor, plan: Plan, grad: bool, dtype: torch.dtype,
                    upstream: list[Tensor] | None = None) -> Callable[[], None]:
        """One call to time, as ``forward`` makes it (cast included); it leaves no gradients behind
        (``autograd.grad``, not ``backward``)."""
        if not grad:
            def forward_only() -> None:
                with torch.no_grad():
                    self._run_plan(x, plan).to(dtype)
            return forward_only
        leaf = x.detach().requires_grad_(x.requires_grad)
        inputs = ([leaf] if x.requires_grad else []) + [p for p in self._parameters_list() if p.requires_grad]
        upstream = [] if upstream is None else upstream
        device = x.device.type

        def forward_backward() -> None:
            with torch.enable_grad():
                y = self._run_plan(leaf, plan).to(dtype)  # under the caller's autocast, if any
                if not upstream:
                    upstream.append(torch.ones_like(y))
                # the backward outside autocast, as in training
                autocast = _autocast_dtype(device) is not None
                with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
                    torch.autograd.grad(y, inputs, upstream[0])
        return forward_backward

    def extra_repr(self) -> str:
        return (f"input_dims={self.input_dims}, hidden_size={self.hidden_size}, "
                f"bias={self.biases is not None}, transform_outer={self.transform_outer}")
