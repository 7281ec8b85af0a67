"""NdLinear's opt-in plan selection by measurement (``zoo.ndlinear.layer.set_autotune``): every plan
it may choose computes the same map from the same parameters, it measures once per key, it is off
by default, and the parameters (state dicts, shipped checkpoints) do not depend on the plan. The
timings are faked where a choice matters; nothing here asserts a time."""

from __future__ import annotations

import itertools

import pytest
import torch

import zoo.ndlinear.layer as layer_module
from zoo.core.registry import checkpoint_dir, read_manifest
from zoo.ndlinear.layer import (
    NdLinear,
    autotune_cache,
    autotune_enabled,
    autotuning,
    clear_autotune_cache,
    set_autotune,
    tuning_candidates,
)

SHAPES = [
    ((64, 8, 8), (64, 8, 8)),
    ((96, 7), (96, 32)),
    ((3, 32, 32), (3, 16, 16)),
    ((768, 1), (3072, 1)),
    ((5, 1, 3), (2, 1, 4)),
    ((1, 4), (3, 1)),
    ((1, 1, 6), (1, 1, 2)),
    ((4, 5, 6, 7), (3, 2, 5, 4)),
    ((2, 3), (4, 5)),
    ((9,), (4,)),
]
CHECKPOINT = checkpoint_dir() / read_manifest().get("digits-ndlinear", {}).get("file", "missing.ckpt")


@pytest.fixture(autouse=True)
def fresh_cache():
    previous = set_autotune(False)
    clear_autotune_cache()
    yield
    clear_autotune_cache()
    set_autotune(previous)


class FakeTimer:
    """Stands in for ``_time_candidates``: counts the measurements (one per key) and the candidate
    calls it was given, runs each call once (a broken plan would still fail) and says ``fastest``
    (a plan) is faster by ``gain`` than the others."""

    def __init__(self, fastest=None, gain: float = 0.5):
        self.measurements, self.calls, self.fastest, self.gain, self.timed = 0, 0, fastest, gain, []
        self.shapes = []

    def __call__(self, calls, device):
        self.measurements += 1
        times = []
        for call in calls:
            call()
            self.calls += 1
            self.timed.append(call.plan)
            seconds = 1.0 - self.gain if call.plan == self.fastest else 1.0
            times.append((seconds, seconds))  # (median, fastest call)
        return times


@pytest.fixture
def fake_timer(monkeypatch):
    timer = FakeTimer()
    original = NdLinear._timed_call

    def tagged(self, x, plan, grad, dtype, **kwargs):  # let the fake timer see which plan a call runs
        call = original(self, x, plan, grad, dtype, **kwargs)
        call.plan = plan
        timer.shapes.append(tuple(x.shape))
        return call

    monkeypatch.setattr(NdLinear, "_timed_call", tagged)
    monkeypatch.setattr(layer_module, "_time_candidates", timer)
    return timer


def outputs_and_grads(layer: NdLinear, x: torch.Tensor, plan, upstream: torch.Tensor):
    x = x.detach().requires_grad_(True)
    out = layer.apply_plan(x, plan)
    grads = torch.autograd.grad((out * upstream).sum(), [x, *layer.parameters()])
    return out, grads


@pytest.mark.parametrize("dims, hidden", SHAPES, ids=[f"{d}->{h}" for d, h in SHAPES])
@pytest.mark.parametrize("bias", [True, False])
def test_every_candidate_plan_gives_the_default_plans_output_and_gradients(dims, hidden, bias):
    torch.manual_seed(0)
    for outer in (True, False):
        layer = NdLinear(dims, hidden, bias=bias, transform_outer=outer, init="reference", dtype=torch.float64)
        x = torch.randn(3, 2, *dims, dtype=torch.float64)
        upstream = torch.randn(3, 2, *hidden, dtype=torch.float64)
        every = layer.candidate_plans()
        assert every[0] == layer.plan and len(set(every)) == len(every)
        # every plan autotuning may pick, and of the rest (hundreds for four modes) every k-th
        tuned = layer.tuning_candidates()
        rest = [p for p in every if p not in tuned]
        plans = tuned + rest[::max(1, len(rest) // 32)]
        expected, expected_grads = outputs_and_grads(layer, x, layer.plan, upstream)
        torch.testing.assert_close(expected, layer(x), rtol=0, atol=0)  # the default forward is plan 0
        for plan in plans[1:]:
            out, grads = outputs_and_grads(layer, x, plan, upstream)
            assert out.shape == (3, 2, *hidden) and out.is_contiguous(), plan
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12, msg=str(plan))
            for got, want in zip(grads, expected_grads):
                torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12, msg=str(plan))


@pytest.mark.parametrize("dims, hidden", SHAPES, ids=[f"{d}->{h}" for d, h in SHAPES])
def test_tuning_candidates_start_with_the_cost_models_plan_and_include_the_reference_way(dims, hidden):
    layer = NdLinear(dims, hidden)
    every = layer.candidate_plans()
    chosen = layer.tuning_candidates()
    assert chosen[0] == layer.plan
    assert len(chosen) == min(len(every), layer_module.AUTOTUNE_CANDIDATES) and len(set(chosen)) == len(chosen)
    assert set(chosen) <= set(every)
    assert layer.tuning_candidates(limit=1) == [layer.plan]
    modes = [k for k in range(len(dims)) if not dims[k] == hidden[k] == 1]
    if len(modes) > 1:  # the reference's way: every mode on its own, in its order, moved last to one GEMM
        reference_like = [p for p in chosen if [s.modes for s in p.steps] == [(k,) for k in modes]
                          and all(s.move for s in p.steps[:-1])]
        assert reference_like, chosen
    assert tuning_candidates(dims, hidden, list(range(len(dims))), limit=3) == chosen[:3]


def test_off_by_default_and_the_plan_is_the_cost_models(fake_timer):
    assert not autotune_enabled()
    torch.manual_seed(0)
    layer = NdLinear((96, 7), (96, 32))
    x = torch.randn(8, 96, 7)
    assert layer.plan_for(x) == layer.plan == layer_module.plan((96, 7), (96, 32), [0, 1])
    torch.testing.assert_close(layer(x), layer.apply_plan(x, layer.plan), rtol=0, atol=0)
    layer(x).sum().backward()
    assert fake_timer.calls == 0 and autotune_cache() == {}
    # autotune=False wins over the module-level switch
    with autotuning():
        assert autotune_enabled()
        assert NdLinear((96, 7), (96, 32), autotune=False).plan_for(x) == layer.plan
    assert not autotune_enabled()
    assert fake_timer.calls == 0 and autotune_cache() == {}


def test_measures_once_per_key_and_uses_the_fastest(fake_timer):
    torch.manual_seed(0)
    layer = NdLinear((64, 8, 8), (64, 8, 8), autotune=True)
    candidates = layer.tuning_candidates()
    fake_timer.fastest = candidates[2]
    x = torch.randn(4, 64, 8, 8, requires_grad=True)

    out = layer(x)
    assert fake_timer.measurements == 1 and fake_timer.calls == len(candidates) and fake_timer.timed == candidates
    assert all(p.grad is None for p in layer.parameters()) and x.grad is None  # timing left no gradients
    torch.testing.assert_close(out, layer.apply_plan(x, candidates[2]), rtol=0, atol=0)
    assert list(autotune_cache().values()) == [candidates[2]]
    for _ in range(3):  # the same key: no more timing
        layer(x).sum().backward()
        assert layer.plan_for(x) == candidates[2]
    assert fake_timer.measurements == 1 and fake_timer.calls == len(candidates)

    # another layer of the same shape shares the process-wide cache
    twin = NdLinear((64, 8, 8), (64, 8, 8), autotune=True)
    twin(x)
    assert fake_timer.calls == len(candidates)

    # a new key each: leading shape, no gradient, dtype, thread count
    layer(torch.randn(2, 3, 64, 8, 8))
    assert fake_timer.measurements == 2 and fake_timer.calls == 2 * len(candidates)
    with torch.no_grad():
        layer(x)
        layer(x)
    assert fake_timer.measurements == 3 and fake_timer.calls == 3 * len(candidates)
    layer.double()(x.double())
    assert fake_timer.measurements == 4 and fake_timer.calls == 4 * len(candidates)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        layer(x.double())
    finally:
        torch.set_num_threads(threads)
    assert fake_timer.measurements == 5 and fake_timer.calls == 5 * len(candidates) and len(autotune_cache()) == 5

    # other shapes and options are other layers' keys
    NdLinear((64, 8, 8), (64, 8, 8), bias=False, autotune=True)(x)
    NdLinear((64, 8, 8), (64, 8, 8), transform_outer=False, autotune=True)(x)
    assert fake_timer.measurements == 7 and fake_timer.calls == 7 * len(candidates)

    clear_autotune_cache()
    layer(x.double())
    assert fake_timer.measurements == 8 and fake_timer.calls == 8 * len(candidates)


def test_the_cost_models_plan_stays_unless_clearly_faster(fake_timer, monkeypatch):
    layer = NdLinear((96, 7), (96, 32), autotune=True)
    fake_timer.fastest, fake_timer.gain = layer.tuning_candidates()[1], 0.02  # 2% faster: noise
    assert layer.plan_for(torch.randn(4, 96, 7)) == layer.plan
    # a faster median but not a faster fastest call (load on the machine): the cost model's plan stays
    slower = [(2.0, 2.0)] * (len(layer.tuning_candidates()) - 2)
    monkeypatch.setattr(layer_module, "_time_candidates", lambda calls, device: [(1.0, 0.5), (0.5, 0.5)] + slower)
    assert layer.plan_for(torch.randn(5, 96, 7)) == layer.plan
    monkeypatch.setattr(layer_module, "_time_candidates", lambda calls, device: [(1.0, 0.9), (0.5, 0.5)] + slower)
    assert layer.plan_for(torch.randn(6, 96, 7)) == layer.tuning_candidates()[1]


def test_large_batches_are_measured_on_a_leading_slice_on_cpu(fake_timer, monkeypatch):
    monkeypatch.setattr(layer_module, "AUTOTUNE_MAX_ELEMENTS", {"cpu": 45})
    layer = NdLinear((4, 5), (3, 2), autotune=True)
    layer(torch.randn(10, 3, 4, 5))  # 30 samples of 20 elements: measured on 2
    assert set(fake_timer.shapes) == {(2, 4, 5)}
    layer(torch.randn(2, 4, 5))  # small enough: as it is
    assert set(fake_timer.shapes[-len(layer.tuning_candidates()):]) == {(2, 4, 5)}
    assert fake_timer.measurements == 2 and len(autotune_cache()) == 2  # keyed by the real leading shapes


def test_module_level_switch_and_context_manager(fake_timer):
    layer = NdLinear((96, 7), (96, 32))
    x = torch.randn(4, 96, 7)
    with autotuning():
        layer(x)
        assert fake_timer.calls == len(layer.tuning_candidates())
        with autotuning(False):
            layer(torch.randn(5, 96, 7))
    assert fake_timer.calls == len(layer.tuning_candidates())
    assert set_autotune(True) is False and set_autotune(False) is True


def test_nothing_to_choose_or_nothing_to_time_measures_nothing(fake_timer, monkeypatch):
    with autotuning():
        single = NdLinear((768, 1), (3072, 1))  # one plan: a single GEMM
        single(torch.randn(2, 768, 1))
        layer = NdLinear((96, 7), (96, 32))
        assert layer(torch.randn(0, 96, 7)).shape == (0, 96, 32)  # an empty batch
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as inside torch.compile
        assert layer.plan_for(torch.randn(4, 96, 7)) == layer.plan
    assert fake_timer.calls == 0 and autotune_cache() == {}


def test_real_measurement_on_cpu_picks_a_candidate_and_leaves_no_gradients():
    torch.manual_seed(0)
    layer = NdLinear((6, 5, 4), (3, 4, 2), autotune=True)
    x = torch.randn(3, 6, 5, 4, requires_grad=True)
    out = layer(x)
    (chosen,) = autotune_cache().values()
    assert chosen in layer.tuning_candidates()
    assert all(p.grad is None for p in layer.parameters()) and x.grad is None
    torch.testing.assert_close(out, layer.apply_plan(x, layer.plan))
    out.sum().backward()
    assert all(p.grad is not None for p in layer.parameters()) and x.grad is not None
    with torch.inference_mode():
        layer(x.detach())
    assert len(autotune_cache()) == 2


def test_state_dict_round_trip_across_plans(fake_timer):
    torch.manual_seed(0)
    dims, hidden = (3, 32, 32), (3, 16, 16)
    default = NdLinear(dims, hidden, init="reference", dtype=torch.float64)
    x = torch.randn(2, *dims, dtype=torch.float64)
    candidates = default.tuning_candidates()
    for fastest in candidates:
        clear_autotune_cache()
        fake_timer.fastest = fastest
        tuned = NdLinear(dims, hidden, dtype=torch.float64, autotune=True)
        assert tuned.state_dict().keys() == default.state_dict().keys()
        tuned.load_state_dict(default.state_dict())
        assert tuned.plan_for(x) == fastest
        torch.testing.assert_close(tuned(x), default(x), rtol=1e-12, atol=1e-12)
        # and back: a state dict saved by a tuned layer loads into a default one unchanged
        torch.nn.init.normal_(tuned.weights[1])
        back = NdLinear(dims, hidden, dtype=torch.float64)
        back.load_state_dict(tuned.state_dict())
        for key, value in tuned.state_dict().items():
            assert torch.equal(back.state_dict()[key], value) and value.shape == back.state_dict()[key].shape
        torch.testing.assert_close(back(x), tuned(x), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint not present")
def test_shipped_checkpoint_loads_and_gives_the_same_outputs_under_every_candidate(fake_timer):
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "head.0."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    dims = tuple(weights[f"weights.{k}"].shape[1] for k in itertools.takewhile(
        lambda k: f"weights.{k}" in weights, itertools.count()))
    hidden = tuple(weights[f"weights.{k}"].shape[0] for k in range(len(dims)))
    default = NdLinear(dims, hidden)
    default.load_state_dict(weights)
    default.double()
    x = torch.randn(5, *dims, dtype=torch.float64)
    expected = default(x)
    for fastest in default.tuning_candidates():
        clear_autotune_cache()
        fake_timer.fastest = fastest
        tuned = NdLinear(dims, hidden, autotune=True)
        tuned.load_state_dict(weights)  # strict: the same keys and shapes whatever the plan
        tuned.double()
        assert tuned.plan_for(x) == fastest
        torch.testing.assert_close(tuned(x), expected, rtol=1e-12, atol=1e-12)


def test_under_autocast_the_output_dtype_is_the_cost_models_whatever_the_plan(fake_timer):
    """Plans adding ``B_eff`` at the end promote a bf16 GEMM result to the parameters' dtype, plans
    with the biases fused return bf16: the autotuned layer returns what the cost model's plan does."""
    torch.manual_seed(0)
    layer = NdLinear((64, 8, 8), (64, 8, 8), autotune=True)
    x = torch.randn(4, 64, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        default = layer.apply_plan(x, layer.plan)
        others = {p.fused_bias for p in layer.tuning_candidates()}
        assert others == {True, False}  # both kinds are candidates
        for fastest in layer.tuning_candidates():
            clear_autotune_cache()
            fake_timer.fastest = fastest
            out = layer(x)
            assert layer.plan_for(x) == fastest and out.dtype == default.dtype, (fastest, out.dtype)
            torch.testing.assert_close(out, default, rtol=0.05, atol=0.05)
    assert list(autotune_cache())[0][7] == torch.bfloat16  # the autocast dtype is part of the key


def test_time_candidates_interleaves_rounds_and_stops_timing_clear_losers(monkeypatch):
    """The round and pruning logic, with each call's time given (no clock is read for them)."""
    counts = [0, 0, 0]

    def call(i):
        def run():
            counts[i] += 1
        run.seconds = (1.0, 0.9, 5.0)[i]
        return run

    order = []

    def fake_time_one(run, device):
        order.append(run.seconds)
        run()
        return run.seconds

    monkeypatch.setattr(layer_module, "_time_one", fake_time_one)
    calls = [call(i) for i in range(3)]
    times = layer_module._time_candidates(calls, torch.device("cpu"))
    assert times == [(1.0, 1.0), (0.9, 0.9), (5.0, 5.0)]  # (median, fastest call)
    warmup, repeats = layer_module.AUTOTUNE_WARMUP_DEFAULT, layer_module.AUTOTUNE_REPEATS
    # the third stops after two rounds; the first (the cost model's) is never dropped
    assert counts == [warmup + repeats, warmup + repeats, warmup + 2]
    assert order[:6] == [1.0, 0.9, 5.0, 1.0, 0.9, 5.0]  # interleaved: one call of each per round


def test_a_candidate_out_of_memory_drops_out_but_the_cost_models_plan_does_not(monkeypatch):
    monkeypatch.setattr(layer_module, "_time_one", lambda run, device: run() or 1.0)
    counts = [0, 0]

    def fine():
        counts[0] += 1

    def too_big():
        counts[1] += 1
        raise torch.OutOfMemoryError("out of memory")

    times = layer_module._time_candidates([fine, too_big], torch.device("cpu"))
    assert times[1] == (float("inf"), float("inf")) and counts[1] == 1 and times[0] == (1.0, 1.0)
    with pytest.raises(torch.OutOfMemoryError):
        layer_module._time_candidates([too_big, fine], torch.device("cpu"))
