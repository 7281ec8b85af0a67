"""The fast paths of the AlignAb co-design network against the plain formulas they replace (kept here as the
reference): IPA's point-distance term as one batched matmul, the pair features by ``cdist`` and a blocked,
in-place RBF expansion, and the sampling-time ``PairCache`` (only the rows and columns of moved residues are
recomputed). Forward in fp32 against the reference in fp64, the training path's gradients, and whole seeded
``CoDesignDiffusion.design`` runs with and without the cache."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from tests.alignab.test_codesign_model import random_inputs, synthetic_batch, tiny_module
from zoo.alignab import CoDesignDiffusion, CoDesignNetwork, codesign_network
from zoo.alignab.codesign_network import PairCache, timestep_embedding
from zoo.alignab.so3 import quaternion_to_matrix, random_rotations

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the reference: the network's formulas before the fast paths ---------------------------------------------
def reference_pair_features(net, rot, pos, chain, resseq):
    same = chain[:, :, None] == chain[:, None, :]
    offset = (resseq[:, None, :] - resseq[:, :, None]).clamp(-net.max_offset, net.max_offset) + net.max_offset
    offset = torch.where(same, offset, torch.full_like(offset, 2 * net.max_offset + 1))
    atoms = 10 * pos[:, :, None] + torch.einsum("bkij,aj->bkai", rot, net.atoms_local.to(rot))
    diff = atoms[:, :, None, :, None] - atoms[:, None, :, None, :]
    dist = (diff.pow(2).sum(-1) + 1e-8).sqrt().flatten(-2)
    centres = net.centres.to(dist)
    width = centres[1] - centres[0]
    rbf = torch.exp(-(((dist[..., None] - centres) / width) ** 2)).flatten(-2)
    return net.pair_norm(net.offset(offset) + net.distance(rbf))


def reference_global(ipa, points, rot, pos):
    b, k = points.shape[:2]
    points = points.view(b, k, ipa.heads, -1, 3)
    return torch.einsum("bkij,bkhpj->bkhpi", rot, points) + pos[:, :, None, None]


def reference_ipa(ipa, s, z, rot, pos, mask):
    b, k, _ = s.shape
    h, c = ipa.heads, ipa.head_dim
    q, key, v = (f(s).view(b, k, h, c) for f in (ipa.q, ipa.k, ipa.v))
    qp, kp = reference_global(ipa, ipa.q_points(s), rot, pos), reference_global(ipa, ipa.k_points(s), rot, pos)
    vp = reference_global(ipa, ipa.v_points(s), rot, pos)
    w_c = math.sqrt(2 / (9 * ipa.qk_points))
    gamma = F.softplus(ipa.gamma)
    scalar = torch.einsum("bihc,bjhc->bhij", q, key) / math.sqrt(c)
    dist = ((qp[:, :, None] - kp[:, None]) ** 2).sum((-1, -2))
    logits = scalar + ipa.bias(z).permute(0, 3, 1, 2) - (gamma * w_c / 2)[None, :, None, None] * dist.permute(0, 3, 1, 2)
    logits = math.sqrt(1 / 3) * logits
    logits = logits.masked_fill(~mask[:, None, None, :], torch.finfo(logits.dtype).min)
    attn = logits.softmax(-1)
    o = torch.einsum("bhij,bjhc->bihc", attn, v).reshape(b, k, -1)
    o_pair = torch.einsum("bhij,bijd->bihd", attn, z).reshape(b, k, -1)
    o_pt = torch.einsum("bhij,bjhpx->bihpx", attn, vp) - pos[:, :, None, None]
    o_pt = torch.einsum("bkji,bkhpj->bkhpi", rot, o_pt)
    norms = o_pt.norm(dim=-1)
    return ipa.out(torch.cat([o, o_pair, o_pt.reshape(b, k, -1), norms.reshape(b, k, -1)], -1))


def reference_forward(net, aa, rot, pos, t, *, role, cdr, design, epitope, chain, resseq, mask, lm=None):
    flags = torch.stack([design, epitope], -1).to(pos.dtype)
    time = net.time(timestep_embedding(t, net.num_steps, net.aa.embedding_dim).to(pos.dtype))
    s = net.aa(aa) + net.role(role) + net.cdr(cdr) + net.flags(flags) + time[:, None]
    if net.lm is not None:
        s = s + net.lm(lm.to(pos.dtype))
    s = net.residue_norm(s)
    z = reference_pair_features(net, rot, pos, chain, resseq)
    for block in net.blocks:
        s = block.norm1(s + reference_ipa(block.attention, s, z, rot, pos, mask))
        s = block.norm2(s + block.mlp(s))
    eps = torch.einsum("bkij,bkj->bki", rot, net.eps_head(s))
    u = net.rot_head(s)
    turn = quaternion_to_matrix(torch.cat([torch.ones_like(u[..., :1]), u], -1))
    return eps, rot @ turn, net.seq_head(s)


# -- helpers ---------------------------------------------------------------------------------------------------
def make_net(lm_dim: int = 0, seed: int = 0) -> CoDesignNetwork:
    torch.manual_seed(seed)
    net = CoDesignNetwork(dim=32, pair_dim=16, depth=2, heads=4, lm_dim=lm_dim)
    for head in (net.eps_head, net.rot_head):  # zero-initialised: give them weights so that the test sees them
        torch.nn.init.normal_(head[-1].weight, std=0.3)
    return net


def inputs(b: int, n: int, lm_dim: int = 0, seed: int = 0, dtype=torch.float32, scale: float = 2.0):
    """``random_inputs`` with positions spread over ``scale`` x 10 A (pair distances cover all RBF centres)."""
    state, cond = random_inputs(b, n, lm_dim, seed)
    state["pos"] = state["pos"] * scale
    cast = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in {**state, **cond}.items()}
    return {k: cast[k] for k in state}, {k: cast[k] for k in cond}


def assert_close(new, ref, rtol=1e-5, what=""):
    """Largest difference within ``rtol`` of the reference's largest magnitude."""
    new, ref = new.detach().double(), ref.detach().double()
    scale = ref.abs().max().clamp_min(1e-12)
    err = float((new - ref).abs().max() / scale)
    assert err < rtol, f"{what}: relative error {err:.2e}"


def call(fn, net, state, cond, **kwargs):
    return fn(net, state["aa"], state["rot"], state["pos"], state["t"], **cond, **kwargs) if fn is not None else \
        net(state["aa"], state["rot"], state["pos"], state["t"], **cond, **kwargs)


# -- the network ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grad", [False, True])
def test_pair_features_match_the_plain_formula(grad):
    net = make_net()
    state, cond = inputs(3, 40)  # 3 x 40 x 40 pairs: more than one RBF block
    assert 3 * 40 * 40 > codesign_network.RBF_BLOCK
    ref = reference_pair_features(net.double(), state["rot"].double(), state["pos"].double(), cond["chain"],
                                  cond["resseq"])
    net.float()
    with torch.set_grad_enabled(grad):
        z = net.pair_features(state["rot"], state["pos"], cond["chain"], cond["resseq"])
    assert z.requires_grad == grad
    assert_close(z, ref, what="pair features")
    # distances cover the RBF centres: the comparison sees every Gaussian
    atoms = net.atom_positions(state["rot"], state["pos"])
    dist = codesign_network.atom_distances(atoms, atoms)
    assert dist.min() < 1 and dist.max() > 25


def test_ipa_matches_the_plain_formula():
    net = make_net()
    state, cond = inputs(2, 24)
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 24, 32, generator=g)
    z = torch.randn(2, 24, 24, 16, generator=g)
    ipa = net.blocks[0].attention
    with torch.no_grad():
        ipa.gamma.copy_(torch.randn(4, generator=g))
        ref = reference_ipa(copy.deepcopy(ipa).double(), s.double(), z.double(), state["rot"].double(),
                            state["pos"].double(), cond["mask"])
        new = ipa(s, z, state["rot"], state["pos"], cond["mask"])
        assert_close(new, ref, what="IPA fp32")
        new64 = copy.deepcopy(ipa).double()(s.double(), z.double(), state["rot"].double(), state["pos"].double(),
                                            cond["mask"])
        assert_close(new64, ref, rtol=1e-10, what="IPA fp64")


@pytest.mark.parametrize("lm_dim", [0, 8])
def test_forward_and_gradients_match_the_plain_formulas(lm_dim):
    """The training path: outputs and every parameter's gradient (fp32 against the reference in fp64)."""
    net = make_net(lm_dim)
    ref_net = copy.deepcopy(net).double()
    state, cond = inputs(3, 20, lm_dim)
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(3, 20, 3, generator=g), torch.randn(3, 20, 3, 3, generator=g),
               torch.randn(3, 20, 20, generator=g)]
    out = call(None, net, state, cond)
    s64 = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    c64 = {k: v.double() if v is not None and v.is_floating_point() else v for k, v in cond.items()}
    ref = call(reference_forward, ref_net, s64, c64)
    for a, b, what in zip(out, ref, ("eps", "R0", "logits")):
        assert_close(a, b, what=what)
    sum(((o * w.to(o)) * cond["mask"].view(3, 20, *[1] * (o.dim() - 2))).sum() for o, w in zip(out, weights)).backward()
    sum(((o * w.to(o)) * cond["mask"].view(3, 20, *[1] * (o.dim() - 2))).sum() for o, w in zip(ref, weights)).backward()
    for (name, p), p_ref in zip(net.named_parameters(), ref_net.parameters()):
        assert p.grad is not None and p_ref.grad is not None, name
        assert_close(p.grad, p_ref.grad, rtol=2e-5, what=f"grad {name}")


def test_gradients_to_the_frames_match_in_fp64():
    """With positions and frames that need a gradient the RBF takes the autograd formula: same gradients."""
    net = make_net().double()
    state, cond = inputs(2, 16, dtype=torch.float64)
    grads = []
    for fn in (None, reference_forward):
        pos, rot = state["pos"].clone().requires_grad_(), state["rot"].clone().requires_grad_()
        out = call(fn, net, {**state, "pos": pos, "rot": rot}, cond)
        (out[0].square().sum() + out[2].sin().sum()).backward()
        grads.append((pos.grad, rot.grad))
    for a, b in zip(*grads):
        assert_close(a, b, rtol=1e-9, what="frame gradients")


# -- the sampling cache -----------------------------------------------------------------------------------------
def test_pair_cache_recomputes_only_what_moved():
    net = make_net().eval()
    state, cond = inputs(3, 30)
    design = cond["design"]
    cache = PairCache()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for step in range(4):
            if step:  # the loop moves, the context stays
                state["pos"] = torch.where(design[..., None], torch.randn(3, 30, 3, generator=g) * 2, state["pos"])
                state["rot"] = torch.where(design[..., None, None], random_rotations((3, 30), g, torch.float32),
                                           state["rot"])
            cached, biases = cache(net, state["rot"], state["pos"], cond["chain"], cond["resseq"])
            full = net.pair_features(state["rot"], state["pos"], cond["chain"], cond["resseq"])
            assert_close(cached, full, rtol=1e-5, what=f"step {step}")
            assert_close(biases, torch.einsum("bijd,hd->hbij", full, net.bias_weight()), what=f"biases {step}")
            ref = reference_pair_features(copy.deepcopy(net).double(), state["rot"].double(), state["pos"].double(),
                                          cond["chain"], cond["resseq"])
            assert_close(cached, ref, rtol=1e-5, what=f"step {step} vs reference")
            out = call(None, net, state, cond, pair_cache=cache)
            for a, b in zip(out, call(None, net, state, cond)):
                assert_close(a, b, what="outputs")
        # a moved context residue is picked up too; a new resseq recomputes everything
        state["pos"] = state["pos"].clone()
        state["pos"][0, (~design[0]).nonzero()[0, 0]] += 0.5
        assert_close(cache(net, state["rot"], state["pos"], cond["chain"], cond["resseq"])[0],
                     net.pair_features(state["rot"], state["pos"], cond["chain"], cond["resseq"]), what="context")
        resseq = cond["resseq"] + 1
        resseq[:, 0] += 5
        assert_close(cache(net, state["rot"], state["pos"], cond["chain"], resseq)[0],
                     net.pair_features(state["rot"], state["pos"], cond["chain"], resseq), what="resseq")
    # while autograd records, the cache is bypassed and the gradient reaches the pair weights
    z, biases = cache(net, state["rot"], state["pos"], cond["chain"], cond["resseq"])
    (z.sum() + biases.sum()).backward()
    assert net.distance.weight.grad is not None and net.offset.weight.grad is not None
    assert net.blocks[0].attention.bias.weight.grad is not None


def test_cached_sampling_gives_the_same_designs(tmp_path, monkeypatch):
    _, batch = synthetic_batch(tmp_path)
    model = tiny_module(lm_guidance=False).eval()
    for head in (model.network.eps_head, model.network.rot_head):
        torch.nn.init.normal_(head[-1].weight, std=0.3)
    full, cached_calls = [], []
    pair_features, cache_call = CoDesignNetwork.pair_features, PairCache.__call__
    monkeypatch.setattr(CoDesignNetwork, "pair_features", lambda *a: full.append(1) or pair_features(*a))
    monkeypatch.setattr(PairCache, "__call__", lambda *a: cached_calls.append(1) or cache_call(*a))
    native, cached, design = model.design(batch, 3, torch.Generator().manual_seed(3))
    steps = model.diffusion.num_steps
    assert len(cached_calls) == steps and len(full) == 1  # all features once, then only the loop's rows
    monkeypatch.setattr(model, "network_fn", lambda cond: CoDesignDiffusion.network_fn(model, cond, cache=False))
    _, plain, _ = model.design(batch, 3, torch.Generator().manual_seed(3))
    assert len(cached_calls) == steps and len(full) == 1 + steps
    assert torch.equal(cached.aa, plain.aa)
    assert (cached.pos - plain.pos).abs().max() < 1e-4
    assert (cached.rot - plain.rot).abs().max() < 1e-4
    assert not torch.equal(cached.pos[design], native.pos[design])
