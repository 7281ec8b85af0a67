"""Hopfield layers against naive loops, attention and pure retrieval; errors; a tiny learning task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.core.errors import ConfigError, ShapeError
from zoo.hopfield.layers import Hopfield, HopfieldLayer, HopfieldPooling
from zoo.hopfield.retrieval import SEPARATIONS, retrieve, separate

PURE = dict(stored_pattern_as_static=True, state_pattern_as_static=True, pattern_projection_as_static=True,
            normalize_stored_pattern=False, normalize_state_pattern=False, normalize_pattern_projection=False,
            disable_out_projection=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def layer_norm(x, norm):
    if norm is None:
        return x
    centered = x - x.mean(-1, keepdim=True)
    return centered / torch.sqrt((centered**2).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias


def linear(x, layer):
    return x if layer is None else x @ layer.weight.T + layer.bias


def naive(layer: Hopfield, stored, state, projection, blocked=None):
    """Eqs. (1)-(4) with loops over batch element, head and query; ``blocked [B, L, S]``, True = forbidden."""
    heads, eps = layer.num_heads, layer.update_steps_eps
    outputs = []
    for b in range(len(state)):
        ys = linear(layer_norm(stored[b], layer.norm_stored), layer.key)
        rs = linear(layer_norm(state[b], layer.norm_state), layer.query)
        vs = linear(layer_norm(projection[b], layer.norm_projection), layer.value)
        z = []
        for h in range(heads):
            q, k, v = (x[:, h * x.shape[1] // heads:(h + 1) * x.shape[1] // heads] for x in (rs, ys, vs))
            beta = layer.scaling or k.shape[1] ** -0.5

            def associate(q):
                rows = torch.zeros(len(q), len(k), dtype=q.dtype)
                for i in range(len(q)):
                    allowed = [s for s in range(len(k)) if blocked is None or not blocked[b, i, s]]
                    if allowed:
                        rows[i, allowed] = separate(beta * k[allowed] @ q[i], layer.separation, layer.alpha)
                return rows

            p = associate(q)
            for _ in range(layer.update_steps_max):
                updated = p @ k
                if max((updated[i] - q[i]).norm() for i in range(len(q))) < eps:
                    break
                q = updated
                p = associate(q)
            z.append(p @ v)
        outputs.append(linear(torch.cat(z, dim=1), layer.out))
    return torch.stack(outputs)


def masks(b: int, l: int, s: int, seed: int = 0):
    """A padding mask (ragged bags), a per-example association mask with one fully forbidden
    query, and their union as the naive loops read it."""
    generator = torch.Generator().manual_seed(seed)
    padding = torch.arange(s) >= torch.tensor([s - 1, s - 2])[:b, None]
    association = torch.rand(b, l, s, generator=generator) < 0.3
    association[0, 1] = True
    return padding, association, padding[:, None, :] | association


CASES = {
    "dense": dict(input_size=6),
    "heads_steps_masks": dict(input_size=6, stored_pattern_size=5, pattern_projection_size=4, hidden_size=3,
                              pattern_size=2, output_size=7, num_heads=2, update_steps_max=3,
                              update_steps_eps=0.05, scaling=0.8),
    "static_parts": dict(input_size=6, stored_pattern_size=5, pattern_projection_size=4, num_heads=2,
                         update_steps_max=2, state_pattern_as_static=True, pattern_projection_as_static=True,
                         disable_out_projection=True, alpha=1.3),
}


@pytest.mark.parametrize("kind", SEPARATIONS)
@pytest.mark.parametrize("case", CASES)
def test_hopfield_equals_naive_loops(kind, case):
    torch.manual_seed(0)
    kwargs = CASES[case]
    layer = Hopfield(separation=kind, **kwargs).double()
    stored = randn(2, 5, kwargs.get("stored_pattern_size", 6), seed=1)
    state = randn(2, 4, 6, seed=2)
    projection = randn(2, 5, kwargs.get("pattern_projection_size", 6), seed=3)
    if case == "dense":
        torch.testing.assert_close(layer((stored, state, projection)), naive(layer, stored, state, projection))
        torch.testing.assert_close(layer(state), naive(layer, state, state, state))  # one tensor: self-association
        return
    padding, association, blocked = masks(2, 4, 5)
    out = layer((stored, state, projection), padding, association)
    torch.testing.assert_close(out, naive(layer, stored, state, projection, blocked))
    p = layer.association((stored, state, projection), padding, association)
    assert p.shape == (2, 2, 4, 5) and (p[blocked[:, None].expand_as(p)] == 0).all()
    torch.testing.assert_close(p.sum(-1)[0, :, 1], torch.zeros(2, dtype=torch.float64))  # nothing allowed: P = 0
    shared = association[0]  # an [L, S] association mask broadcasts over the batch
    torch.testing.assert_close(layer((stored, state, projection), association_mask=shared),
                               naive(layer, stored, state, projection, shared.expand(2, 4, 5)))


@pytest.mark.parametrize("kind", SEPARATIONS)
def test_pooling_and_lookup_layer_equal_naive_loops(kind):
    torch.manual_seed(0)
    pooling = HopfieldPooling(6, quantity=3, num_heads=2, update_steps_max=2, separation=kind).double()
    bags = randn(2, 5, 6, seed=1)
    padding, _, _ = masks(2, 3, 5)
    queries = pooling.query.expand(2, -1, -1)
    expected = naive(pooling.hopfield, bags, queries, bags, padding[:, None, :].expand(2, 3, 5))
    torch.testing.assert_close(pooling(bags, padding), expected.flatten(1))
    assert pooling(bags).shape == (2, 3 * 6)

    lookup = HopfieldLayer(6, quantity=7, output_size=4, num_heads=2, update_steps_max=1, separation=kind).double()
    x = randn(2, 3, 6, seed=2)
    weights, targets = lookup.lookup_weights.expand(2, -1, -1), lookup.lookup_targets.expand(2, -1, -1)
    torch.testing.assert_close(lookup(x), naive(lookup.hopfield, weights, x, targets))
    assert lookup.association(x).shape == (2, 2, 3, 7) and targets.shape == (2, 7, 4)
    pure_lookup = HopfieldLayer(6, quantity=7, output_size=4, pattern_projection_as_static=True,
                                normalize_pattern_projection=False, disable_out_projection=True).double()
    p = pure_lookup.association(x)[:, 0]
    torch.testing.assert_close(pure_lookup(x), p @ pure_lookup.lookup_targets)  # retrieves the targets themselves


@pytest.mark.parametrize("heads", [1, 2])
def test_dense_layer_is_scaled_dot_product_attention(heads):
    torch.manual_seed(0)
    layer = Hopfield(8, num_heads=heads, normalize_stored_pattern=False, normalize_state_pattern=False,
                     normalize_pattern_projection=False).double()
    stored, state = randn(3, 6, 8, seed=1), randn(3, 4, 8, seed=2)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
    q, k, v = split(layer.query(state)), split(layer.key(stored)), split(layer.value(stored))
    attention = F.scaled_dot_product_attention(q, k, v, attn_mask=~padding[:, None, None, :])  # True = attend
    torch.testing.assert_close(layer((stored, state, stored), padding), layer.out(attention.transpose(1, 2).flatten(2)))


@pytest.mark.parametrize("kind", SEPARATIONS)
@pytest.mark.parametrize("steps", [0, 4])
def test_static_pure_layer_is_retrieval(kind, steps):
    layer = Hopfield(separation=kind, alpha=1.3, scaling=0.7, update_steps_max=steps, update_steps_eps=1e-3, **PURE)
    assert list(layer.parameters()) == []
    stored, state = randn(3, 6, 5, seed=1), randn(3, 4, 5, seed=2)
    out = layer((stored, state, stored))
    for b in range(3):
        expected = retrieve(state[b], stored[b], 0.7, kind, 1.3, steps=steps + 1, tol=1e-3)
        torch.testing.assert_close(out[b], expected)


@pytest.mark.parametrize("kind", SEPARATIONS)
def test_gradients_match_finite_differences(kind):
    torch.manual_seed(0)
    layer = Hopfield(4, num_heads=2, update_steps_max=2, update_steps_eps=0.0, separation=kind).double()
    padding, association, _ = masks(2, 3, 5)
    stored = randn(2, 5, 4, seed=1).requires_grad_()
    state = randn(2, 3, 4, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda y, r: layer((y, r, y), padding, association), (stored, state), fast_mode=True)


def test_every_parameter_gets_a_gradient_including_a_learned_alpha():
    torch.manual_seed(0)
    layer = Hopfield(6, num_heads=2, update_steps_max=2, separation="entmax", alpha=1.3, learn_alpha=True).double()
    assert abs(layer.alpha.item() - 1.3) < 1e-6
    padding, association, _ = masks(2, 4, 5)
    out = layer((randn(2, 5, 6, seed=1), randn(2, 4, 6, seed=2), randn(2, 5, 6, seed=3)), padding, association)
    out.square().sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(input_size=4, num_heads=0), ConfigError, "num_heads must be >= 1, got 0"),
    (dict(input_size=4, scaling=-1.0), ConfigError, "scaling must be > 0, got -1.0"),
    (dict(input_size=4, separation="max"), ConfigError, "separation must be one of .*, got 'max'"),
    (dict(input_size=4, alpha=2.5), ConfigError, r"alpha must lie in \[1, 2\], got 2.5"),
    (dict(input_size=4, learn_alpha=True), ConfigError, "learn_alpha needs separation='entmax'.*'softmax'"),
    (dict(input_size=4, separation="entmax", alpha=2.0, learn_alpha=True), ConfigError, r"alpha in \(1, 2\).*2.0"),
    (dict(input_size=4, update_steps_max=-1), ConfigError, "update_steps_max must be >= 0, got -1"),
    (dict(input_size=4, dropout=1.0), ConfigError, r"dropout must lie in \[0, 1\), got 1.0"),
    (dict(input_size=0), ConfigError, "input_size must be >= 1, got 0"),
    (dict(), ConfigError, "stored LayerNorm needs stored_pattern_size or input_size, got None"),
    (dict(normalize_stored_pattern=False, normalize_state_pattern=False, normalize_pattern_projection=False),
     ConfigError, "stored projection needs stored_pattern_size or input_size, got None"),
    (dict(input_size=6, num_heads=4, state_pattern_as_static=True), ConfigError,
     "static input_size=6 must be divisible by num_heads=4"),
    (dict(input_size=4, stored_pattern_size=6, **PURE), ConfigError,
     "same width, got input_size=4, stored_pattern_size=6"),
    (dict(input_size=4, hidden_size=3, state_pattern_as_static=True), ConfigError,
     "hidden_size=3 must equal the static patterns' width per head, 4"),
    (dict(input_size=4, output_size=3, disable_out_projection=True), ConfigError, "output_size=3"),
])
def test_bad_settings_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        Hopfield(**kwargs)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m(torch.randn(2, 5, 3)), ShapeError, r"stored patterns must have shape \[B, N, 4\], got \[2, 5, 3\]"),
    (lambda m: m(torch.randn(5, 4)), ShapeError, r"got \[5, 4\]"),
    (lambda m: m((torch.randn(2, 5, 4), torch.randn(2, 3, 4))), ShapeError, "got tuple of length 2"),
    (lambda m: m((torch.randn(2, 5, 4), torch.randn(3, 3, 4), torch.randn(2, 5, 4))), ShapeError,
     r"\[2, 5, 4\], \[3, 3, 4\] and \[2, 5, 4\]"),
    (lambda m: m(torch.randn(2, 5, 4), torch.zeros(2, 4, dtype=torch.bool)), ShapeError,
     r"stored_pattern_padding_mask must have shape \[2, 5\], got \[2, 4\]"),
    (lambda m: m(torch.randn(2, 5, 4), association_mask=torch.zeros(5, 4, dtype=torch.bool)), ShapeError,
     r"association_mask must have shape \[5, 5\] or \[2, 5, 5\], got \[5, 4\]"),
    (lambda m: m(torch.randn(2, 5, 4), torch.zeros(2, 5)), ConfigError, "must be a bool tensor .*, got torch.float32"),
    (lambda m: HopfieldPooling(4)(torch.randn(5, 4)), ShapeError, r"\[B, N, d\], got \[5, 4\]"),
])
def test_bad_inputs_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call(Hopfield(4))


def test_pure_layer_without_sizes_checks_widths_at_forward():
    layer = Hopfield(num_heads=2, **PURE)
    with pytest.raises(ShapeError, match="static state width 5 must be divisible by num_heads=2"):
        layer(torch.randn(1, 3, 5))
    with pytest.raises(ShapeError, match="same width per head, got 3 and 2"):
        layer((torch.randn(1, 3, 4), torch.randn(1, 2, 6), torch.randn(1, 3, 4)))


def planted_bags(n: int, generator: torch.Generator, pattern: torch.Tensor, size: int = 12):
    """Bags of 4..12 random vectors (padded); half of them contain a noisy copy of ``pattern``."""
    bags = torch.randn(n, size, len(pattern), generator=generator)
    lengths = torch.randint(4, size + 1, (n,), generator=generator)
    label = torch.rand(n, generator=generator) < 0.5
    where = (torch.rand(n, generator=generator) * lengths).long()[label]
    bags[label, where] = pattern + 0.1 * torch.randn(len(where), len(pattern), generator=generator)
    return bags, torch.arange(size) >= lengths[:, None], label.float()


@pytest.mark.parametrize("kind", ["softmax", "sparsemax"])
def test_pooling_learns_to_find_a_planted_pattern(kind):
    torch.manual_seed(0)
    generator, pattern = torch.Generator().manual_seed(0), torch.randn(8)
    model = torch.nn.ModuleDict({"pool": HopfieldPooling(8, hidden_size=8, separation=kind),
                                 "head": torch.nn.Linear(8, 1)})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        bags, padding, label = planted_bags(64, generator, pattern)
        logits = model["head"](model["pool"](bags, padding)).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logits, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    bags, padding, label = planted_bags(1000, generator, pattern)
    with torch.no_grad():
        accuracy = ((model["head"](model["pool"](bags, padding)).squeeze(-1) > 0) == label.bool()).float().mean()
    assert accuracy > 0.9, accuracy
