"""zoo.ndlinear.NdLinear against an obviously-correct fp64 reference (the Kronecker product on the
flattened tensor) and against the reference package ``ndlinear`` 1.0.0, for many shapes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from ndlinear import NdLinear as ReferenceNdLinear

from zoo.core.errors import ConfigError, ShapeError
from zoo.ndlinear.layer import NdLinear, plan

SHAPES = [
    ((64, 8, 8), (64, 8, 8)),
    ((768, 1), (3072, 1)),
    ((96, 7), (96, 32)),
    ((3, 32, 32), (3, 16, 16)),
    ((5, 1, 3), (2, 1, 4)),
    ((1, 4), (3, 1)),
    ((4, 5, 6, 7), (3, 2, 5, 4)),
    ((2, 3), (4, 5)),
    ((9,), (4,)),
    ((1,), (1,)),
    ((1, 1, 6), (1, 1, 2)),
]


def kron_reference(layer: NdLinear, x: torch.Tensor) -> torch.Tensor:
    """Y = kron(W_1, ..., W_n) vec(X) + vec(B), biases added mode by mode in the reference's order
    with explicit loops over the modes (float64)."""
    n = len(layer.input_dims)
    lead = x.shape[:-n]
    flat = x.reshape(-1, math.prod(layer.input_dims))
    weight = layer.weights[0].detach()
    for w in list(layer.weights)[1:]:
        weight = torch.kron(weight, w.detach())
    out = flat @ weight.T
    if layer.biases is not None:
        bias = torch.zeros(layer.hidden_size, dtype=x.dtype)
        order = range(n) if layer.transform_outer else reversed(range(n))
        applied: list[int] = []
        for k in order:  # bias of mode k, then every map applied after it
            term = layer.biases[k].detach().view([-1 if j == k else 1 for j in range(n)]).expand(layer.hidden_size)
            later = [j for j in (range(n) if layer.transform_outer else reversed(range(n))) if j not in applied and j != k]
            for j in later:
                row_sums = layer.weights[j].detach().sum(1)
                term = term * row_sums.view([-1 if i == j else 1 for i in range(n)])
            bias = bias + term
            applied.append(k)
        out = out + bias.reshape(-1)
    return out.reshape(*lead, *layer.hidden_size)


@pytest.mark.parametrize("dims, hidden", SHAPES, ids=[f"{d}->{h}" for d, h in SHAPES])
@pytest.mark.parametrize("transform_outer", [True, False])
def test_equals_the_reference_package_and_the_kronecker_form(dims, hidden, transform_outer):
    torch.manual_seed(0)
    reference = ReferenceNdLinear(dims, hidden, transform_outer=transform_outer).double()
    layer = NdLinear.from_reference(reference).double()
    x = torch.randn(3, *dims, dtype=torch.float64, requires_grad=True)
    expected = reference(x)
    got = layer(x)
    assert got.shape == expected.shape == (3, *hidden) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, kron_reference(layer, x), rtol=1e-12, atol=1e-12)
    # gradients too: input, every weight, every bias
    upstream = torch.randn_like(expected)
    grads = torch.autograd.grad((expected * upstream).sum(), [x, *reference.parameters()])
    ours = torch.autograd.grad((got * upstream).sum(), [x, *layer.parameters()])
    ref_params = dict(zip([n for n, _ in reference.named_parameters()], grads[1:]))
    torch.testing.assert_close(ours[0], grads[0], rtol=1e-10, atol=1e-12)
    for k in range(len(dims)):
        torch.testing.assert_close(ours[1 + k],
                                   ref_params[f"align_layers.{k}.weight"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours[1 + len(dims) + k], ref_params[f"align_layers.{k}.bias"],
                                   rtol=1e-10, atol=1e-12)


def test_output_is_contiguous_for_every_plan():
    for dims, hidden in SHAPES + [((96, 32), (24, 7)), ((2, 3), (4, 5))]:
        for outer in (True, False):
            for bias in (True, False):
                layer = NdLinear(dims, hidden, bias=bias, transform_outer=outer)
                assert layer(torch.randn(4, *dims)).is_contiguous(), (dims, hidden, outer, bias, layer.plan)


def test_any_number_of_leading_dims_and_no_bias():
    layer = NdLinear((4, 5), (3, 2), bias=False).double()
    x = torch.randn(2, 3, 7, 4, 5, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (2, 3, 7, 3, 2)
    torch.testing.assert_close(out, kron_reference(layer, x))
    torch.testing.assert_close(layer(x[0, 0, 0]), out[0, 0, 0])  # no leading dims at all
    assert layer.biases is None and layer.effective_bias() is None


def test_every_plan_matches_for_random_shapes():
    generator = torch.Generator().manual_seed(1)
    for _ in range(30):
        n = int(torch.randint(1, 5, (1,), generator=generator))
        dims = tuple(int(v) for v in torch.randint(1, 7, (n,), generator=generator))
        hidden = tuple(int(v) for v in torch.randint(1, 7, (n,), generator=generator))
        for outer in (True, False):
            for bias in (True, False):
                layer = NdLinear(dims, hidden, bias=bias, transform_outer=outer, init="reference", dtype=torch.float64)
                x = torch.randn(2, *dims, dtype=torch.float64)
                out = layer(x)
                assert out.is_contiguous()
                torch.testing.assert_close(out, kron_reference(layer, x), rtol=1e-12, atol=1e-12)


def test_plan_avoids_copies_and_merges_small_trailing_modes():
    # the paper's CIFAR head: mode 0 as one batched GEMM, modes (8, 8) merged into one 64 x 64 map
    square = plan((64, 8, 8), (64, 8, 8), [0, 1, 2])
    assert [(s.modes, s.move) for s in square.steps] == [((0,), False), ((1, 2), False)]
    # the transformer case (d, 1) -> (h, 1): a single GEMM, the learned scalar folded away
    single = plan((768, 1), (3072, 1), [0, 1])
    assert [(s.modes, s.after) for s in single.steps] == [((0,), 1)]
    # a plan that keeps the reference's order fuses the biases into the GEMMs
    assert plan((3, 32, 32), (3, 16, 16), [0, 1, 2]).fused_bias


def test_size_one_case_is_one_linear_layer():
    reference = ReferenceNdLinear((6, 1), (4, 1))
    layer = NdLinear.from_reference(reference)
    scale = reference.align_layers[1].weight.item()
    x = torch.randn(5, 6, 1)
    dense = torch.nn.functional.linear(x[..., 0], reference.align_layers[0].weight * scale,
                                       reference.align_layers[0].bias * scale + reference.align_layers[1].bias)
    torch.testing.assert_close(layer(x)[..., 0], dense)


@pytest.mark.parametrize("dims, hidden", [((64, 8, 8), (64, 8, 8)), ((96, 7), (96, 32)), ((3, 32, 32), (3, 16, 16))])
def test_dense_init_keeps_the_output_scale_of_a_dense_layer(dims, hidden):
    torch.manual_seed(0)
    x = torch.randn(512, *dims)
    dense = torch.nn.Linear(math.prod(dims), math.prod(hidden), bias=False)
    dense_std = dense(x.flatten(1)).std().item()
    ours = NdLinear(dims, hidden, bias=False)(x).std().item()
    reference = NdLinear(dims, hidden, bias=False, init="reference")(x).std().item()
    assert abs(ours / dense_std - 1) < 0.15
    if len(dims) > 1:
        assert reference / dense_std < 0.8  # the reference init shrinks with the number of modes


def test_device_and_dtype():
    layer = NdLinear((3, 4), (2, 2), dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in layer.parameters())


def test_bad_input_names_expected_and_actual():
    layer = NdLinear((3, 4), (2, 2))
    with pytest.raises(ShapeError, match=r"input must end with dims \[3, 4\], got shape \[2, 4, 3\]"):
        layer(torch.randn(2, 4, 3))
    with pytest.raises(ShapeError, match=r"got shape \[4\]"):
        layer(torch.randn(4))
    with pytest.raises(ConfigError, match=r"input_dims \(3, 4\) and hidden_size \(2,\) must have the same"):
        NdLinear((3, 4), (2,))
    with pytest.raises(ConfigError, match="sizes must be >= 1"):
        NdLinear((3, 0), (2, 2))
    with pytest.raises(ConfigError, match="init must be one of"):
        NdLinear((3,), (2,), init="xavier")
    with pytest.raises(ConfigError, match="build this one with bias=True"):
        NdLinear((3,), (2,), bias=False).load_reference_state_dict(ReferenceNdLinear((3,), (2,)).state_dict())
    with pytest.raises(ConfigError, match="keys"):
        NdLinear((3, 2), (2, 2)).load_reference_state_dict(ReferenceNdLinear((3,), (2,)).state_dict())


def test_parameter_count():
    for dims, hidden in SHAPES:
        layer = NdLinear(dims, hidden)
        assert sum(p.numel() for p in layer.parameters()) == sum(d * h + h for d, h in zip(dims, hidden))


def test_zero_size_batch():
    layer = NdLinear((3, 4), (2, 5))
    assert layer(torch.randn(0, 3, 4)).shape == (0, 2, 5)


def test_kron_reference_is_itself_right():
    """The slow reference, checked by brute force on one small case: sum over every index."""
    torch.manual_seed(2)
    layer = NdLinear((2, 3), (3, 2), init="reference", dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    w0, w1, b0, b1 = layer.weights[0], layer.weights[1], layer.biases[0], layer.biases[1]
    out = torch.zeros(3, 2, dtype=torch.float64)
    for a, b in itertools.product(range(3), range(2)):
        total = sum(w0[a, i] * w1[b, j] * x[i, j] for i in range(2) for j in range(3))
        out[a, b] = total + b0[a] * w1[b].sum() + b1[b]  # mode 0 first: its bias goes through map 1
    torch.testing.assert_close(kron_reference(layer, x), out.detach())
    torch.testing.assert_close(layer(x), out.detach())
