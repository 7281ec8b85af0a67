"""zoo.dit.model against naive float64 re-implementations (attention, an adaLN-Zero block, the sin-cos
tables), the zero init, the sizes and the paper's parameter count, label dropout, in-context
conditioning and the errors."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.core.errors import ConfigError, ShapeError
from zoo.dit.model import (
    DIT_SIZES,
    AdaLNZeroBlock,
    Attention,
    DiT,
    LabelEmbedder,
    dit,
    patchify,
    pos_embed_2d,
    timestep_embedding,
    unpatchify,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter (the zero-initialised ones too) with N(0, std^2) noise."""
    g = generator(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny(**kwargs) -> DiT:
    torch.manual_seed(0)
    return dit("DiT-tiny", input_size=8, **kwargs)


def inputs(model: DiT, batch: int = 3, seed: int = 1):
    g = generator(seed)
    x = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, model.num_classes, (batch,), generator=g) if model.num_classes else None
    return x, t, y


# -- naive float64 references --------------------------------------------------------------------
def naive_attention(x: torch.Tensor, attn: Attention) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per sample and head, with explicit exp / sum, then the projection."""
    b, n, d = x.shape
    dh = d // attn.heads
    w, bias = attn.qkv.weight.detach(), attn.qkv.bias.detach()
    out = torch.zeros(b, n, d, dtype=x.dtype)
    for s in range(b):
        qkv = x[s] @ w.T + bias  # [n, 3d]: q, k, v side by side, each split into heads
        for h in range(attn.heads):
            q, k, v = (qkv[:, i * d + h * dh: i * d + (h + 1) * dh] for i in range(3))
            scores = torch.einsum("id,jd->ij", q, k) / math.sqrt(dh)
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            weights = weights / weights.sum(dim=1, keepdim=True)
            out[s, :, h * dh:(h + 1) * dh] = weights @ v
    return out @ attn.proj.weight.detach().T + attn.proj.bias.detach()


def naive_layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def naive_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def naive_adaln_zero_block(x: torch.Tensor, c: torch.Tensor, block: AdaLNZeroBlock) -> torch.Tensor:
    """x + gate_a Attn(LN(x)(1 + scale_a) + shift_a), then the same for the MLP (DiT paper, Fig. 3)."""
    d = x.shape[-1]
    silu = c / (1 + torch.exp(-c))
    mod = silu @ block.modulation[1].weight.detach().T + block.modulation[1].bias.detach()
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (mod[:, None, i * d:(i + 1) * d] for i in range(6))
    x = x + gate_a * naive_attention(naive_layer_norm(x) * (1 + scale_a) + shift_a, block.attn)
    fc1, fc2 = block.mlp[0], block.mlp[2]
    h = naive_layer_norm(x) * (1 + scale_m) + shift_m
    h = naive_gelu_tanh(h @ fc1.weight.detach().T + fc1.bias.detach()) @ fc2.weight.detach().T + fc2.bias.detach()
    return x + gate_m * h


# -- numerics --------------------------------------------------------------------------------------
def test_attention_equals_naive_softmax_attention():
    attn = Attention(16, heads=4).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64, generator=generator())
    torch.testing.assert_close(attn(x), naive_attention(x, attn), rtol=1e-12, atol=1e-12)


def test_adaln_zero_block_equals_naive_block():
    block = randomize(AdaLNZeroBlock(16, heads=4, mlp_ratio=2.0)).double()
    g = generator(1)
    x, c = torch.randn(2, 5, 16, dtype=torch.float64, generator=g), torch.randn(2, 16, dtype=torch.float64, generator=g)
    out = block(x, c)
    torch.testing.assert_close(out, naive_adaln_zero_block(x, c, block), rtol=1e-10, atol=1e-10)
    assert (out - x).abs().max() > 0.1  # the branches contribute


def test_pos_embed_equals_explicit_sincos_formula():
    dim, grid = 16, 3
    q = dim // 4
    expected = torch.zeros(grid * grid, dim, dtype=torch.float64)
    for r in range(grid):
        for c in range(grid):
            for k in range(q):
                w = 10000.0 ** (-k / q)
                expected[r * grid + c, [k, q + k, 2 * q + k, 3 * q + k]] = torch.tensor(
                    [math.sin(c * w), math.cos(c * w), math.sin(r * w), math.cos(r * w)], dtype=torch.float64)
    torch.testing.assert_close(pos_embed_2d(dim, grid), expected, rtol=0, atol=1e-12)
    model = DiT(input_size=6, patch_size=2, hidden_size=dim, num_heads=2, depth=1)
    assert "pos_embed" in dict(model.named_buffers()) and "pos_embed" not in dict(model.named_parameters())
    torch.testing.assert_close(model.pos_embed[0], expected.float())


def test_timestep_embedding_equals_explicit_formula():
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, dim=8)
    for i, ti in enumerate(t.tolist()):
        f = [10000.0 ** (-k / 4) for k in range(4)]
        row = [math.cos(ti * fk) for fk in f] + [math.sin(ti * fk) for fk in f]
        torch.testing.assert_close(emb[i], torch.tensor(row), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(timestep_embedding(t.float()), timestep_embedding(t))  # int and float t agree


def test_patchify_round_trip_and_patch_embedding_is_a_linear_map_of_patches():
    x = torch.randn(2, 3, 8, 8, generator=generator())
    for p in (1, 2, 4, 8):
        patches = patchify(x, p)
        assert patches.shape == (2, (8 // p) ** 2, p * p * 3)
        assert torch.equal(unpatchify(patches, p, 3), x)
    # patch (row 1, column 0) of size 2 holds pixels x[:, :, 2:4, 0:2], flattened as (row, column, channel)
    assert torch.equal(patchify(x, 2)[:, 4], x[:, :, 2:4, 0:2].permute(0, 2, 3, 1).reshape(2, -1))
    # the Conv2d patch embedding is a Linear on patchify's vectors, with the kernel in that layout
    model = DiT(input_size=8, patch_size=2, in_channels=3, hidden_size=16, num_heads=2, depth=1)
    conv = model.patch_embed
    tokens = conv(x).flatten(2).transpose(1, 2)
    linear = patchify(x, 2) @ conv.weight.permute(0, 2, 3, 1).reshape(16, -1).T + conv.bias
    torch.testing.assert_close(tokens, linear, rtol=1e-5, atol=1e-5)


# -- init ------------------------------------------------------------------------------------------
def test_adaln_zero_init_outputs_zero_and_every_block_is_the_identity():
    model = tiny()
    x, t, y = inputs(model)
    assert torch.equal(model(x, t, y), torch.zeros_like(x))
    h = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    assert c.abs().min() > 0
    for block in model.blocks:
        assert torch.equal(block(h, c), h)
    # the rest is not zero: the patch, label and timestep embeddings start as in DiT
    assert model.patch_embed.weight.std() > 0 and model.y_embedder.table.weight.std() > 0.01
    assert abs(model.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.002


def test_one_step_from_zero_init_reaches_every_parameter():
    """adaLN-Zero opens up in order: step 1 only trains the final Linear (everything behind it sees
    a zero Jacobian), step 2 the gates and the final modulation, step 3 everything else."""
    model = tiny()
    x, t, y = inputs(model, batch=4)
    force_drop = torch.tensor([True, False, False, True])  # the null row gets a gradient too
    target = torch.randn(x.shape, generator=generator(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    reached: set[str] = set()
    for step in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x, t, y, force_drop), target).backward()
        nonzero = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
        if step == 0:
            assert nonzero == {"final.linear.weight", "final.linear.bias"}
        reached |= nonzero
        optimizer.step()
        if step == 0:
            assert model(x, t, y, force_drop).abs().min() > 0
    assert reached == {name for name, _ in model.named_parameters()}


# -- sizes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch", [2, 4, 8])
@pytest.mark.parametrize("size", list(DIT_SIZES))
def test_every_size_and_patch_gives_the_input_shape(size, patch):
    """DiT-tiny runs on the CPU; the others on the meta device (shapes only, no memory, no FLOPs)."""
    device = "cpu" if size == "DiT-tiny" else "meta"
    with torch.device(device):
        model = dit(f"{size}/{patch}", input_size=16, in_channels=4, learn_sigma=True)
        x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([1.5, 999.0]), torch.tensor([0, 10])
        out = model(x, t, y)
    assert out.shape == (2, 8, 16, 16)
    assert model.pos_embed.shape == (1, (16 // patch) ** 2, DIT_SIZES[size]["hidden_size"])
    assert len(model.blocks) == DIT_SIZES[size]["depth"]


def test_dit_xl2_parameter_count_matches_the_paper():
    """675,129,632 in DiT's count includes its positional table, a frozen nn.Parameter there
    (256 x 1152 = 294,912 numbers) and a buffer here."""
    with torch.device("meta"):
        model = dit("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    trainable = sum(p.numel() for p in model.parameters())
    assert model.pos_embed.numel() == 256 * 1152
    assert trainable == 674_834_720
    assert trainable + model.pos_embed.numel() == 675_129_632


def test_named_constructor():
    with torch.device("meta"):
        a, b, c = dit("DiT-S/4", input_size=8), dit("DiT-S", patch_size=4, input_size=8), dit("DiT-S", input_size=8)
    assert a.patch_size == b.patch_size == 4 and c.patch_size == 2
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert len(dit("DiT-tiny/2", depth=1).blocks) == 1  # kwargs override the table
    with pytest.raises(ConfigError, match="DiT-tiny, DiT-S, DiT-B, DiT-L, DiT-XL"):
        dit("DiT-XXL/2")
    with pytest.raises(ConfigError, match="patch size"):
        dit("DiT-S/x")
    with pytest.raises(ConfigError, match="patch size 4, but patch_size=8"):
        dit("DiT-S/4", patch_size=8)


# -- labels ----------------------------------------------------------------------------------------
def test_force_drop_gives_the_null_class_output():
    model = randomize(tiny()).eval()
    x, t, y = inputs(model)
    null = torch.full_like(y, model.null_class)
    assert model.null_class == 10 and model.y_embedder.table.num_embeddings == 11
    uncond = model(x, t, null)
    assert torch.equal(model(x, t, y, torch.ones(3, dtype=torch.bool)), uncond)
    mixed = model(x, t, y, torch.tensor([True, False, True]))
    torch.testing.assert_close(mixed[[0, 2]], uncond[[0, 2]])
    torch.testing.assert_close(mixed[1], model(x, t, y)[1])
    assert (model(x, t, y) - uncond).abs().max() > 1e-3  # the label matters


def test_class_dropout_acts_only_in_training():
    model = randomize(tiny(class_dropout=0.5))
    x, t, _ = inputs(model, batch=32)
    y = torch.full((32,), 3)
    model.eval()
    cond, null = model(x, t, y), model(x, t, torch.full_like(y, model.null_class))
    assert torch.equal(model(x, t, y), cond)
    model.train()
    out = model(x, t, y)
    is_cond = [torch.allclose(out[i], cond[i], atol=1e-5) for i in range(32)]
    is_null = [torch.allclose(out[i], null[i], atol=1e-5) for i in range(32)]
    assert all(a != b for a, b in zip(is_cond, is_null)) and any(is_cond) and any(is_null)
    # the drop rate is class_dropout
    embedder = LabelEmbedder(5, 4, dropout=0.25).train()
    dropped = (embedder(torch.zeros(4000, dtype=torch.long)) == embedder.table.weight[5]).all(dim=1).float().mean()
    assert abs(dropped.item() - 0.25) < 0.03
    embedder.dropout = 0.0
    assert torch.equal(embedder(torch.arange(5)), embedder.table.weight[:5])


def test_unconditional_model_takes_no_labels():
    model = randomize(tiny(num_classes=0))
    x, t, y = inputs(model)
    assert y is None and model.y_embedder is None and model.null_class is None
    assert model(x, t).shape == x.shape
    with pytest.raises(ConfigError, match="unconditional"):
        model(x, t, torch.zeros(3, dtype=torch.long))


# -- in-context conditioning -----------------------------------------------------------------------
@pytest.mark.parametrize("num_classes, extra", [(10, 2), (0, 1)])
def test_in_context_appends_condition_tokens_and_drops_them(num_classes, extra):
    model = tiny(conditioning="in_context", num_classes=num_classes)
    x, t, y = inputs(model)
    assert torch.equal(model(x, t, y), torch.zeros_like(x))  # zero-initialised output Linear
    randomize(model)
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.update(first_in=args[0]))
    model.blocks[-1].register_forward_hook(lambda m, args, out: seen.update(last_out=out))
    model.final.register_forward_hook(lambda m, args, out: seen.update(final_in=args[0]))
    out = model(x, t, y)
    patches = (8 // 2) ** 2
    assert out.shape == x.shape
    assert seen["first_in"].shape == (3, patches + extra, 64)
    assert torch.equal(seen["final_in"], seen["last_out"][:, :patches])
    assert (model(x, t + 1, y) - out).abs().max() > 1e-4  # the timestep token is attended to
    if num_classes:
        assert (model(x, t, (y + 1) % 10) - out).abs().max() > 1e-4


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(input_size=9, patch_size=2), "input_size 9 is not divisible by patch_size 2"),
    (dict(hidden_size=64, num_heads=5), "hidden_size 64 is not divisible by num_heads 5"),
    (dict(hidden_size=18, num_heads=3), "divisible by 4"),
    (dict(conditioning="cross_attention"), "conditioning must be one of"),
    (dict(class_dropout=1.0), r"class_dropout must be in \[0, 1\), got 1.0"),
    (dict(class_dropout=-0.1), "class_dropout"),
    (dict(num_classes=-1), "num_classes must be >= 0"),
    (dict(depth=0), "depth must be >= 1"),
    (dict(patch_size=0), "patch_size must be >= 1"),
    (dict(mlp_ratio=0), "mlp_ratio must be > 0"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DiT(**{"hidden_size": 64, "num_heads": 4, "depth": 1, **kwargs})


B = 3
X, T, Y = torch.zeros(B, 1, 8, 8), torch.zeros(B), torch.zeros(B, dtype=torch.long)


@pytest.mark.parametrize("args, error, match", [
    ((torch.zeros(B, 2, 8, 8), T, Y), ShapeError, r"x must have shape \[B, 1, 8, 8\], got \[3, 2, 8, 8\]"),
    ((torch.zeros(B, 1, 16, 16), T, Y), ShapeError, r"\[B, 1, 8, 8\]"),
    ((torch.zeros(1, 8, 8), T, Y), ShapeError, r"x must have shape"),
    ((X, torch.zeros(B, 1), Y), ShapeError, r"t must have shape \[B\] = \[3\]"),
    ((X, T, torch.zeros(2, dtype=torch.long)), ShapeError, r"y must be integer class ids of shape \[B\]"),
    ((X, T, torch.zeros(B)), ShapeError, "y must be integer"),
    ((X, T, torch.tensor([0, 11, 2])), ConfigError, r"class ids must be in \[0, 10\].*\[11\]"),
    ((X, T, torch.tensor([-1, 0, 2])), ConfigError, r"\[-1\]"),
    ((X, T, None), ConfigError, "y is required"),
    ((X, T, Y, torch.zeros(B)), ShapeError, "force_drop must be a bool mask"),
    ((X, T, Y, torch.zeros(2, dtype=torch.bool)), ShapeError, "force_drop"),
])
def test_bad_forward_inputs(args, error, match):
    with pytest.raises(error, match=match):
        tiny()(*args)


def test_null_class_id_is_a_valid_label():
    model = tiny()
    assert model(X, T, torch.full((B,), model.null_class)).shape == X.shape
