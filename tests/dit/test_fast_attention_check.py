"""zoo.dit.fast_attention_check: the entry statistics against a slow fp64 loop, the polynomial
attention's small-entry limit, and the attention swap (default off, bit-identical on exit)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zoo.dit.fast_attention_check import (
    attention_inputs,
    entry_statistics,
    gradient_errors,
    layer_errors,
    polynomial_attention,
    scaled_exact_attention,
    swapped_attention,
)
from zoo.dit.model import DiT, modulate


def tiny_dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    net = DiT(input_size=4, patch_size=1, in_channels=2, hidden_size=16, depth=2, num_heads=2, num_classes=3)
    with torch.no_grad():  # leave the zero init: random modulation and output layers, as after training
        for block in net.blocks:
            block.modulation[1].weight.normal_(0, 0.3)
            block.modulation[1].bias.normal_(0, 0.3)
        net.final.linear.weight.normal_(0, 0.3)
        net.final.modulation[1].weight.normal_(0, 0.3)
    return net.double().eval()


def inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 2, 4, 4, generator=g, dtype=torch.float64)
    return x, torch.tensor([5, 300, 900][:batch]), torch.tensor([0, 2, 1][:batch])


def slow_statistics(net: DiT, x, t, y) -> list[dict[str, float]]:
    """The same numbers by explicit loops over samples, heads and token pairs."""
    with torch.no_grad():
        tokens = net.patch_embed(x).flatten(2).transpose(1, 2) + net.pos_embed
        c = net.t_embedder(t) + net.y_embedder(y)
        rows = []
        for block in net.blocks:
            shift, scale = block.modulation(c)[:, None].chunk(6, dim=-1)[:2]
            h = modulate(block.norm1(tokens), shift, scale)
            w, bias = block.attn.qkv.weight, block.attn.qkv.bias
            dim, heads = h.shape[-1], block.attn.heads
            dh = dim // heads
            max_q = max_k = max_v = max_score = 0.0
            for b in range(h.shape[0]):
                qkv = [w @ h[b, i] + bias for i in range(h.shape[1])]
                for head in range(heads):
                    q = [r[head * dh:(head + 1) * dh] for r in qkv]
                    k = [r[dim + head * dh:dim + (head + 1) * dh] for r in qkv]
                    v = [r[2 * dim + head * dh:2 * dim + (head + 1) * dh] for r in qkv]
                    for i in range(len(q)):
                        max_q = max(max_q, float(q[i].abs().max()))
                        max_k = max(max_k, float(k[i].abs().max()))
                        max_v = max(max_v, float(v[i].abs().max()))
                        for j in range(len(k)):
                            max_score = max(max_score, abs(float(sum(q[i][a] * k[j][a] for a in range(dh)))) / math.sqrt(dh))
            rows.append(dict(max_q=max_q, max_k=max_k, max_v=max_v, max_score=max_score,
                             b_eq=dh ** 0.25 * max(max_q, max_k)))
            tokens = block(tokens, c)
    return rows


def test_entry_statistics_match_a_slow_loop():
    net = tiny_dit()
    x, t, y = inputs()
    fast, slow = entry_statistics(net, x, t, y), slow_statistics(net, x, t, y)
    assert len(fast) == len(slow) == 2
    for f, s in zip(fast, slow):
        for key, value in s.items():
            assert math.isclose(f[key], value, rel_tol=1e-10), (key, f[key], value)
        assert f["tokens"] == 16 and math.isclose(f["sqrt_log_tokens"], math.sqrt(math.log(16)))
        assert f["max_score"] <= f["cs_bound"] * (1 + 1e-12)


def test_polynomial_attention_is_exact_in_the_small_entry_limit():
    net = tiny_dit()
    x, t, y = inputs()
    for degree in (2, 4):
        rows = layer_errors(net, x, t, y, degree, multiplier=0.05)
        for r in rows:
            # the Taylor remainder bound B^(g+1)/(g+1)! e^(2B) on attention weights (factor 2), times a margin
            assert r["rel_error"] <= 4 * math.exp((degree + 1) * math.log(r["max_score"]) - math.lgamma(degree + 2)
                                                  + 2 * r["max_score"]) + 1e-12
            assert r["rel_error"] < 1e-3
        # the whole network, every attention swapped, against the exact network at the same entry scale
        with swapped_attention(net, scaled_exact_attention(0.05)):
            exact = net(x, t, y)
        with swapped_attention(net, polynomial_attention(degree, 0.05)):
            approx = net(x, t, y)
        assert (approx - exact).norm() / exact.norm() < 1e-4
    # the error shrinks as the entries do
    errors = [layer_errors(net, x, t, y, 2, m)[0]["rel_error"] for m in (0.8, 0.4, 0.2)]
    assert errors[0] > errors[1] > errors[2]


def test_swap_is_default_off_and_bit_identical():
    net = tiny_dit()
    x, t, y = inputs()
    before = net(x, t, y)
    hooks = [len(b.attn._forward_hooks) + len(b.attn._forward_pre_hooks) for b in net.blocks]
    with swapped_attention(net, lambda q, k, v: F.scaled_dot_product_attention(q, k, v)):
        same = net(x, t, y)  # the hook recomputes the block's own attention: same ops, same bits
    with swapped_attention(net, polynomial_attention(2, 3.0)):
        different = net(x, t, y)
    attention_inputs(net, x, t, y)
    entry_statistics(net, x, t, y)
    after = net(x, t, y)
    assert torch.equal(same, before)
    assert not torch.allclose(different, before)
    assert torch.equal(after, before)
    assert [len(b.attn._forward_hooks) + len(b.attn._forward_pre_hooks) for b in net.blocks] == hooks == [0, 0]


def _loss(x, t, y):
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return lambda net: (net(x, t, y)[:, :x.shape[1]] - target).pow(2).mean()


def test_exact_swap_gives_the_plain_autograd_gradient():
    net = tiny_dit()
    x, t, y = inputs()
    loss = _loss(x, t, y)
    params = list(net.parameters())
    plain = torch.autograd.grad(loss(net), params)
    with swapped_attention(net, scaled_exact_attention(1.0)):
        swapped = torch.autograd.grad(loss(net), params)
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(plain, swapped))


def test_gradient_errors_vanish_with_small_entries_and_grow_with_the_entry_bound():
    net = tiny_dit().requires_grad_(False)
    x, t, y = inputs()
    small = gradient_errors(net, _loss(x, t, y), degree=6, multiplier=0.05)
    assert set(small) >= {"attention", "mlp", "all", "block0.qkv", "block1.qkv"}
    assert max(small.values()) < 1e-9, small
    errors = [gradient_errors(net, _loss(x, t, y), degree=2, multiplier=m)["attention"] for m in (0.25, 1.0, 4.0)]
    assert errors[0] < errors[1] < errors[2], errors
    assert not any(p.requires_grad for p in net.parameters()), "flags restored"
    assert errors[2] > 1e-2  # large entries: the degree-2 gradient is far off
