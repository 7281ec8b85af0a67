"""The hand-set GD transformer (``zoo.icl.construction``) against slow references (loops, fp64).

Three layers of checks:

1. the loop reference *is* gradient descent (against ``torch.autograd``), and the vectorized
   ``batched_gd`` equals it;
2. the transformer computes *exactly* the formulas it claims, approximations included: its
   iterates equal the loop reference run with the same ramp and product rule to 1e-12, even where
   the approximations are crude (few ReLU terms, a wide ramp);
3. the approximation error against true GD: zero (to rounding) for the ``gate`` and ``ewml``
   products when no pre-activation falls in the ramp ``(0, delta)``; for the ``relu_sum`` products
   within the a-priori bound of the ReLU-sum squares (``h^2 / 8`` per product, propagated through
   the backward pass), step by step, falling as the number of ReLU terms grows, and exact to
   rounding when the knots align with the 0/1 gates.
"""

from __future__ import annotations

import math

import pytest
import torch

from data_modules.icl_tasks import sample_prompts
from zoo.core.errors import ConfigError, ShapeError
from zoo.icl.construction import (
    ElementwiseProduct,
    ReLUAttention,
    ReLUMLP,
    batched_gd,
    build_gd_transformer,
    he_init,
    interp_square,
    reference_gd,
    square_knots,
)

pytestmark = pytest.mark.usefixtures("one_thread")

D, WIDTH, ETA = 4, 6, 0.1


def prompts(num: int, n: int, seed: int, depth: int = 3, d: int = D):
    """``num`` relu_net prompts (the task's sampler) with ``n`` examples and one query, fp64."""
    xs, ys, _ = sample_prompts("relu_net", num, n + 1, d, torch.Generator().manual_seed(seed), depth=depth, hidden=32)
    xs, ys = xs.double(), ys.double()
    return xs[:, :n], ys[:, :n], xs[:, n]


def max_diff(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> float:
    return max((x - y).abs().max().item() for ta, tb in zip(a, b) for x, y in zip(ta, tb))


def signals(w: list[torch.Tensor], xs: torch.Tensor, ys: torch.Tensor):
    """Exact back-propagation at per-prompt weights ``w [B, out, in]``: hidden activations ``h_l``
    (``h_0 = x``), pre-activations ``z_l`` and ``v_l = W_{l+1}^T s_{l+1}`` for l = 1..N-1."""
    hs, zs = [xs], []
    for l, m in enumerate(w):
        z = hs[-1] @ m.transpose(1, 2)
        zs.append(z)
        hs.append(torch.relu(z) if l < len(w) - 1 else z)
    s, vs = hs[-1] - ys[..., None], {}
    for l in range(len(w) - 1, 0, -1):
        vs[l] = s @ w[l]
        s = (zs[l - 1] > 0).double() * vs[l]
    return hs, zs, vs


def relu_sum_step_bound(w: list[torch.Tensor], xs: torch.Tensor, relu_terms: int, bound: float, eta: float):
    """Entrywise bound on ``|one relu_sum step - one exact GD step|`` from the same weights, per layer.

    Each product ``r'(z) v`` is off by at most ``e = h^2 / 8`` (two interpolated squares, each within
    ``h^2 / 4``, divided by 4) while ``|v| <= bound`` and ``r'`` is 0 or 1. An error ``E`` in
    ``s_{l+1}`` reaches ``v_l = W_{l+1}^T s_{l+1}`` as at most ``c E`` (``c`` the largest absolute
    column sum of ``W_{l+1}``) and passes a product with slope at most ``1 + h / 2`` (the
    interpolant's slope is within ``h`` of ``2t``; for a 0 gate the product is exactly 0). The
    gradient of ``W_l`` averages ``s_l h_{l-1}^T``, so its error is at most ``E_l max|h_{l-1}|``.
    """
    h = (bound + 1.0) / relu_terms
    e = h * h / 8
    depth = len(w)
    hs, _, _ = signals(w, xs, torch.zeros(xs.shape[:2], dtype=xs.dtype))
    errors = {depth: 0.0}  # s_N = p - y is exact
    for l in range(depth - 1, 0, -1):
        c = w[l].abs().sum(1).max().item()  # W_{l+1} = w[l]
        errors[l] = e + (1 + h / 2) * c * errors[l + 1]
    return [eta * errors[l] * hs[l - 1].abs().max().item() for l in range(1, depth + 1)]


# ------------------------------------------------------------------------- 1. the references


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_reference_is_gradient_descent_and_batched_equals_it(depth):
    xs, ys, xq = prompts(3, 7, seed=1)
    init = he_init(D, depth, WIDTH, seed=3)
    iterates, predictions = reference_gd(xs, ys, xq, init, ETA, 3)
    for b in range(3):  # autograd GD on (1/2n) sum (f - y)^2, one prompt at a time
        w = [m.clone().requires_grad_() for m in init]
        for t in range(3):
            h = xs[b]
            for l, m in enumerate(w):
                h = h @ m.T if l == depth - 1 else torch.relu(h @ m.T)
            loss = 0.5 * ((h[:, 0] - ys[b]) ** 2).mean()
            grads = torch.autograd.grad(loss, w)
            with torch.no_grad():
                w = [(m - ETA * g).requires_grad_() for m, g in zip(w, grads)]
            for m, ref in zip(w, iterates[t + 1]):
                assert torch.allclose(m.detach(), ref[b], atol=1e-13, rtol=0)
    batched_iterates, batched_predictions = batched_gd(xs, ys, xq, init, ETA, 3)
    assert max_diff(batched_iterates, iterates) < 1e-13
    assert torch.allclose(batched_predictions, predictions, atol=1e-13, rtol=0)


def test_relu_sum_square_is_the_interpolant():
    """The ReLU sums of ``square_knots`` and the direct interpolation are one function, within
    ``h^2 / 4`` of ``t^2`` on ``[-(bound + 1), bound + 1]``."""
    t = torch.linspace(-9, 9, 2001, dtype=torch.float64)
    for terms in (1, 3, 16):
        h, coefs = square_knots(terms, 8.0)
        by_relus = sum(c * (torch.relu(t - k * h) + torch.relu(-t - k * h)) for k, c in enumerate(coefs))
        assert torch.allclose(by_relus, interp_square(t, terms, 8.0), atol=1e-12, rtol=0)
        assert (by_relus - t**2).abs().max() <= h * h / 4 + 1e-12


# --------------------------------------------------- 2. the transformer computes its formulas


@pytest.mark.parametrize("product, depth", [(p, n) for p in ("relu_sum", "gate", "ewml") for n in (1, 2, 3)])
def test_transformer_computes_exactly_its_formulas(product, depth):
    """Crude approximations on purpose (4 ReLU terms, a ramp 0.3 wide that many pre-activations
    fall in): the transformer still equals the loop reference with the same rules to 1e-12."""
    xs, ys, xq = prompts(3, 8, seed=2)
    model = build_gd_transformer(depth, 4, WIDTH, ETA, relu_terms=4, n_dims=D, product=product, ramp_width=0.3,
                                 bound=3.0, seed=5)
    trace = model.trace(xs, ys, xq)
    iterates, predictions = reference_gd(xs, ys, xq, he_init(D, depth, WIDTH, 5), ETA, 4, ramp_width=0.3,
                                         product=product, relu_terms=4, bound=3.0)
    assert max_diff(trace.iterates, iterates) < 1e-12
    assert torch.allclose(trace.predictions[..., 0], predictions[..., 0], atol=1e-12, rtol=0)
    assert torch.allclose(model(xs, ys, xq), predictions[:, -1, 0], atol=1e-12, rtol=0)
    params = trace.stream[..., model.layout.parameters]  # every token holds the same copy of w
    assert (params - params[:, :1]).abs().max() < 1e-12


def test_projection_clips_like_the_reference():
    xs, ys, xq = prompts(2, 6, seed=4)
    model = build_gd_transformer(2, 3, WIDTH, 0.5, n_dims=D, product="gate", ramp_width=1e-3, radius=0.4, seed=1)
    iterates, _ = reference_gd(xs, ys, xq, he_init(D, 2, WIDTH, 1), 0.5, 3, radius=0.4, ramp_width=1e-3,
                               product="gate")
    trace = model.trace(xs, ys, xq)
    assert max_diff(trace.iterates, iterates) < 1e-10  # gates rounded to ~eps |z| / delta
    assert max(m.abs().max().item() for m in trace.iterates[-1]) <= 0.4


# ---------------------------------------------- 3. against true gradient descent (N = 2, 3)


@pytest.mark.parametrize("product", ["gate", "ewml"])
@pytest.mark.parametrize("depth", [2, 3])
def test_gate_and_ewml_follow_true_gd(product, depth):
    """Exact where the construction is exact: with no pre-activation in the ramp ``(0, 1e-6)`` and
    ``|v| <= bound`` along the path (both checked), 8 steps match true GD to rounding: the gates
    are rounded to about ``eps |z| / delta`` (~1e-10 here), hence the tolerance 1e-8."""
    steps, delta = 8, 1e-6
    xs, ys, xq = prompts(4, 10, seed=6)
    init = he_init(D, depth, WIDTH, seed=7)
    true_iterates, true_predictions, pre = batched_gd(xs, ys, xq, init, ETA, steps, with_preactivations=True)
    assert not ((pre > 0) & (pre < delta)).any()
    assert max(v.abs().max().item() for w in true_iterates[:-1] for v in signals(w, xs, ys)[2].values()) <= 32.0
    model = build_gd_transformer(depth, steps, WIDTH, ETA, n_dims=D, product=product, ramp_width=delta, bound=32.0,
                                 seed=7)
    trace = model.trace(xs, ys, xq)
    assert max_diff(trace.iterates, true_iterates) < 1e-8
    assert torch.allclose(trace.predictions, true_predictions, atol=1e-8, rtol=0)


@pytest.mark.parametrize("depth", [2, 3])
def test_relu_sum_steps_stay_within_the_relu_sum_bound(depth):
    """Every one of the L = 6 steps the ``relu_sum`` transformer takes differs from an exact GD step
    from the same weights by at most ``relu_sum_step_bound`` (h^2 / 8 per product, propagated).
    After 6 steps the iterates are within twice the sum over steps of the largest per-layer bound
    of true GD (max over all entries: an error in ``W_1`` reaches ``W_N`` at the next step; the 2
    allows for growth through the GD map). Measured: each step 24-105x inside its bound, the final
    error 35-77x inside."""
    steps, terms, bound = 6, 48, 24.0
    xs, ys, xq = prompts(4, 10, seed=8)
    init = he_init(D, depth, WIDTH, seed=9)
    model = build_gd_transformer(depth, steps, WIDTH, ETA, relu_terms=terms, n_dims=D, ramp_width=1e-6, bound=bound,
                                 seed=9)
    trace = model.trace(xs, ys, xq)
    total = 0.0
    for t in range(steps):
        w = trace.iterates[t]
        _, zs, vs = signals(w, xs, ys)
        assert not any(((z > 0) & (z < 1e-6)).any() for z in zs[:-1])  # gates are 0 or 1
        assert all(v.abs().max() <= bound for v in vs.values())
        exact_step, _ = batched_gd(xs, ys, xq, w, ETA, 1)
        local = relu_sum_step_bound(w, xs, terms, bound, ETA)
        errors = [(a - b).abs().max().item() for a, b in zip(trace.iterates[t + 1], exact_step[1])]
        assert all(err <= lim + 1e-12 for err, lim in zip(errors, local)), (t, errors, local)  # + rounding
        total += max(local)
    true_iterates, _ = batched_gd(xs, ys, xq, init, ETA, steps)
    final = max((a - b).abs().max().item() for a, b in zip(trace.iterates[-1], true_iterates[-1]))
    assert 0 < final <= 2 * total, (final, total)  # the approximation is visible, and bounded


@pytest.mark.parametrize("depth", [2, 3])
def test_relu_sum_error_falls_with_terms_and_vanishes_when_knots_align(depth):
    """More ReLU terms, smaller error (after 4 steps, against true GD): 8 -> 32 -> 128 pieces of
    ``[0, 17]`` (``bound = 16``). For a 0/1 gate, ``g v = (q(v + 1) - q(v - 1)) / 4`` and the
    interpolation error of ``t^2`` is ``h``-periodic, so it cancels exactly when ``2 / h`` is an
    integer: 17 and 34 pieces (``h = 1``, ``1/2``) are exact to rounding."""
    xs, ys, xq = prompts(4, 10, seed=10)
    init = he_init(D, depth, WIDTH, seed=11)
    true_iterates, _ = batched_gd(xs, ys, xq, init, ETA, 4)
    assert max(v.abs().max().item() for w in true_iterates for v in signals(w, xs, ys)[2].values()) <= 16.0

    def error(terms: int) -> float:
        model = build_gd_transformer(depth, 4, WIDTH, ETA, relu_terms=terms, n_dims=D, ramp_width=1e-6, bound=16.0,
                                     seed=11)
        return max_diff(model.trace(xs, ys, xq).iterates, true_iterates)

    errors = [error(terms) for terms in (8, 32, 128)]
    assert errors[0] > errors[1] > errors[2] > 0 and errors[0] > 100 * errors[2], errors
    assert error(17) < 1e-8 and error(34) < 1e-8


def test_wider_ramp_larger_error():
    """The ramp standing for ReLU' is the approximation a ReLU network forces: with exact products
    the error against true GD grows with its width (0 where no pre-activation falls inside)."""
    xs, ys, xq = prompts(4, 10, seed=12)
    init = he_init(D, 3, WIDTH, seed=13)
    true_iterates, _ = batched_gd(xs, ys, xq, init, ETA, 4)
    errors = [max_diff(build_gd_transformer(3, 4, WIDTH, ETA, n_dims=D, product="ewml", ramp_width=delta,
                                            seed=13).trace(xs, ys, xq).iterates, true_iterates)
              for delta in (1e-6, 0.01, 0.1, 1.0)]
    assert errors[0] < 1e-8 < errors[1] < errors[2] < errors[3], errors


# ---------------------------------------------------------------------- interface and errors


def test_shapes_queries_and_prefixes():
    xs, ys, _ = prompts(2, 6, seed=14)
    model = build_gd_transformer(2, 2, WIDTH, ETA, n_dims=D, product="gate", seed=0)
    assert model(xs[:, :5], ys[:, :5], xs[:, 5]).shape == (2,)
    both = model(xs[:, :4], ys[:, :4], xs[:, 4:6])  # queries are not keys: each is answered alone
    assert both.shape == (2, 2)
    assert torch.allclose(both[:, 1], model(xs[:, :4], ys[:, :4], xs[:, 5]), atol=1e-13, rtol=0)
    prefixes = model.predict_prefixes(xs, ys, [0, 3, 5])
    assert prefixes.shape == (2, 3) and (prefixes[:, 0] == 0).all()
    assert torch.allclose(prefixes[:, 2], model(xs[:, :5], ys[:, :5], xs[:, 5]), atol=1e-13, rtol=0)
    with pytest.raises(ShapeError, match="n_dims=4"):
        model(xs[..., :3], ys, xs[:, 0, :3])
    with pytest.raises(ShapeError, match="ys must have shape"):
        model(xs, ys[:, :2], xs[:, 0])


@pytest.mark.parametrize("product, per_step", [("gate", lambda n: 2 * n + 3), ("relu_sum", lambda n: 3 * n + 2),
                                               ("ewml", lambda n: 3 * n + 2)])
@pytest.mark.parametrize("depth", [2, 3])
def test_layer_plan(product, per_step, depth):
    """Per step: N forward attention layers, the gates, the loss MLP, the backward layers, the
    update, the projection MLP (vs the paper's 2N + 4); plus N forward layers for the prediction.
    Only ReLU attention and ReLU MLPs, except the paper's EWML with ``product="ewml"``."""
    model = build_gd_transformer(depth, 3, WIDTH, ETA, relu_terms=4, n_dims=D, product=product)
    info = model.describe()
    assert info["layers_per_step"] == per_step(depth) and info["layers"] == 3 * per_step(depth) + depth
    kinds = {type(layer) for layer in model.layers}
    assert kinds == ({ReLUAttention, ReLUMLP, ElementwiseProduct} if product == "ewml" else {ReLUAttention, ReLUMLP})
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("kwargs, name", [
    ({"depth": 0}, "depth"), ({"depth": -2}, "depth"), ({"depth": 2.0}, "depth"), ({"steps": 0}, "steps"),
    ({"width": 0}, "width"), ({"width": -4}, "width"), ({"eta": 0.0}, "eta"), ({"eta": math.nan}, "eta"),
    ({"relu_terms": 0}, "relu_terms"), ({"ramp_width": 0.0}, "ramp_width"), ({"bound": -1.0}, "bound"),
    ({"product": "softmax"}, "product"), ({"n_dims": 0}, "n_dims"),
    ({"init": [torch.zeros(3, 3)]}, "init")])
def test_bad_configs_raise_one_line(kwargs, name):
    args = {"depth": 2, "steps": 2, "width": 4, "eta": 0.1, **kwargs}
    with pytest.raises(ConfigError) as info:
        build_gd_transformer(**args)
    message = str(info.value)
    assert "\n" not in message and message.startswith(name)
    if name not in ("init",):
        assert repr(kwargs[name]) in message
