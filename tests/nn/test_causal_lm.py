"""zoo.nn.causal_lm against transformers' LlamaForCausalLM on a tiny random config (logits with and
without padding, tied embeddings, gradients, greedy generation), RMSNorm and rotary embeddings
against scalar loops in float64, the KV cache against a full forward, and one-line errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.core.errors import CheckpointError, ConfigError, ShapeError
from zoo.nn.causal_lm import (
    CAUSAL_LM_SIZES,
    CausalLM,
    LlamaConfig,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    load_hf_state_dict,
)

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
VOCAB = 128


def hf_llama(tie: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0, **kwargs) -> nn.Module:
    """A tiny random LlamaForCausalLM with weights large enough that logits differ clearly."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0,
        tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None, pad_token_id=0,
        attn_implementation="eager", **kwargs)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model.to(dtype).eval()


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf():
    return hf_llama()


# -- layers against loops ----------------------------------------------------------------------
def test_rms_norm_matches_loop_fp64():
    x = torch.randn(3, 5, 8, dtype=F64)
    norm = RMSNorm(8, eps=1e-5).to(F64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8, dtype=F64))
    out = norm(x).detach()
    for i in range(3):
        for t in range(5):
            rms = math.sqrt(sum(float(v) ** 2 for v in x[i, t]) / 8 + 1e-5)
            for c in range(8):
                assert abs(float(out[i, t, c]) - float(norm.weight[c].detach()) * float(x[i, t, c]) / rms) < 1e-12


def test_rotary_matches_pairwise_rotation_loop_fp64():
    """Rotate-half RoPE: dims (i, i + d/2) are rotated by the angle p theta^(-2i/d)."""
    d, theta = 8, 500.0
    x = torch.randn(2, 3, 6, d, dtype=F64)  # [B, H, T, d]
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 3, 0, 11, 2, 9]])
    cos, sin = RotaryEmbedding(d, theta)(positions, F64)
    out = apply_rotary(x, cos, sin)
    for b in range(2):
        for h in range(3):
            for t in range(6):
                p = int(positions[b, t])
                for i in range(d // 2):
                    angle = p * theta ** (-2 * i / d)
                    x1, x2 = float(x[b, h, t, i]), float(x[b, h, t, i + d // 2])
                    assert abs(float(out[b, h, t, i]) - (x1 * math.cos(angle) - x2 * math.sin(angle))) < 1e-12
                    assert abs(float(out[b, h, t, i + d // 2]) - (x2 * math.cos(angle) + x1 * math.sin(angle))) < 1e-12


def test_rotary_preserves_relative_scores():
    """<R_p q, R_s k> depends only on p - s: the point of rotary embeddings."""
    d = 16
    rope = RotaryEmbedding(d, 10000.0)
    q, k = torch.randn(1, 1, 1, d, dtype=F64), torch.randn(1, 1, 1, d, dtype=F64)

    def score(p: int, s: int) -> float:
        cq, sq = rope(torch.tensor([[p]]), F64)
        ck, sk = rope(torch.tensor([[s]]), F64)
        return float((apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-12)


# -- equality with transformers ----------------------------------------------------------------
@pytest.mark.parametrize("tie", [False, True])
def test_logits_equal_hf(tie):
    hf = hf_llama(tie=tie)
    model = CausalLM.from_hf(hf)
    assert model.config.tie_word_embeddings is tie
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    assert list(model.state_dict()) == list(hf.state_dict())
    x = ids(3, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=0, atol=1e-5)


def test_logits_equal_hf_fp64():
    hf = hf_llama(dtype=F64)
    model = CausalLM.from_hf(hf)
    assert model.lm_head.weight.dtype == F64
    x = ids(2, 10)
    with torch.no_grad():
        # transformers computes rotary angles in float32 even for a float64 model
        torch.testing.assert_close(model(x), hf(x).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_logits_equal_hf_and_unpadded(hf, side):
    model = CausalLM.from_hf(hf)
    x = ids(3, 10)
    mask = torch.ones_like(x)
    lengths = [10, 6, 3]
    for row, n in enumerate(lengths):
        pad = slice(0, 10 - n) if side == "left" else slice(n, 10)
        mask[row, pad] = 0
        x[row, pad] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        ours = model(x, attention_mask=mask)
        theirs = hf(x, attention_mask=mask, position_ids=positions).logits
        real = mask.bool()
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours[real], theirs[real], rtol=0, atol=1e-5)
        for row in range(len(lengths)):
            alone = model(x[row][real[row]][None])[0]
            torch.testing.assert_close(ours[row][real[row]], alone, rtol=0, atol=1e-5)


def test_state_dict_loads_directly(hf):
    model = CausalLM(LlamaConfig.from_hf(hf.config))
    model.load_state_dict(hf.state_dict())
    x = ids(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=0, atol=1e-5)


def test_gradients_equal_hf():
    hf = hf_llama().train()
    model = CausalLM.from_hf(hf).train()
    x = ids(2, 12)
    F = nn.functional
    F.cross_entropy(model(x)[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1)).backward()
    F.cross_entropy(hf(x).logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1)).backward()
    theirs = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=0, atol=1e-5, msg=name)


def test_greedy_generate_equals_hf(hf):
    model = CausalLM.from_hf(hf)
    x = ids(2, 5)
    ours = model.generate(x, max_new_tokens=12)
    theirs = hf.generate(x, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours, theirs)


def test_left_padded_greedy_generate_equals_hf(hf):
    model = CausalLM.from_hf(hf)
    x = ids(2, 7)
    mask = torch.ones_like(x)
    x[1, :3], mask[1, :3] = 0, 0
    ours = model.generate(x, max_new_tokens=8, attention_mask=mask)
    theirs = hf.generate(x, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours[1, 3:], model.generate(x[1:, 3:], max_new_tokens=8)[0])


# -- the KV cache and sampling -----------------------------------------------------------------
def test_incremental_decoding_equals_full_forward(hf):
    model = CausalLM.from_hf(hf)
    x = ids(2, 11)
    with torch.no_grad():
        full = model(x)
        logits, cache = model(x[:, :4], use_cache=True)
        steps = [logits]
        for t in range(4, 11, 3):  # chunks of 3, 3 and 1 tokens after a 4-token prompt
            logits, cache = model(x[:, t:t + 3], past_key_values=cache, use_cache=True)
            steps.append(logits)
    assert all(k.shape == (2, 2, 11, 16) for k, _ in cache)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


def test_incremental_decoding_with_padding_equals_full_forward(hf):
    model = CausalLM.from_hf(hf)
    x = ids(2, 9)
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    with torch.no_grad():
        full = model(x, attention_mask=mask)
        first, cache = model(x[:, :6], attention_mask=mask[:, :6], use_cache=True)
        rest = model(x[:, 6:], attention_mask=mask, past_key_values=cache)
    real = mask.bool()
    torch.testing.assert_close(torch.cat([first, rest], dim=1)[real], full[real], rtol=0, atol=1e-5)


def test_sampling_is_seeded_and_respects_top_k():
    model = CausalLM(LlamaConfig(vocab_size=VOCAB))
    x = ids(2, 3)

    def sample(seed: int, **kwargs) -> torch.Tensor:
        return model.generate(x, 10, temperature=1.0, generator=torch.Generator().manual_seed(seed), **kwargs)

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    # top_k = 1 is greedy whatever the temperature
    assert torch.equal(sample(3, top_k=1), model.generate(x, 10))


def test_sizes_build():
    for name in CAUSAL_LM_SIZES:
        config = LlamaConfig.from_name(name, vocab_size=32)
        assert config.hidden_size == CAUSAL_LM_SIZES[name]["hidden_size"]
    model = CausalLM(LlamaConfig.from_name("lm-tiny"))
    names = {n for n, _ in model.named_modules()}
    assert {"model.layers.1.self_attn.q_proj", "model.layers.0.mlp.gate_proj", "lm_head"} <= names
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 256)


# -- one-line errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_size=60, num_attention_heads=8), "hidden_size=60 is not divisible by num_attention_heads=8"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "num_attention_heads=4 is not divisible by num_key_va"),
    (dict(vocab_size=0), "vocab_size must be a positive integer, got 0"),
    (dict(num_hidden_layers=-1), "num_hidden_layers must be a positive integer, got -1"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps must be positive"),
    (dict(hidden_size=12, num_attention_heads=4, num_key_value_heads=4), "head width .* = 3 must be even"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LlamaConfig(**kwargs)


def test_bad_size_and_hf_features():
    with pytest.raises(ConfigError, match="unknown causal LM size 'lm-huge'; available: lm-tiny"):
        LlamaConfig.from_name("lm-huge")
    base = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4)
    with pytest.raises(ConfigError, match="hidden_act='gelu'; expected 'silu'"):
        LlamaConfig.from_hf(transformers.LlamaConfig(**base, hidden_act="gelu"))
    with pytest.raises(ConfigError, match="rope_type='linear'"):
        LlamaConfig.from_hf(transformers.LlamaConfig(
            **base, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}))
    with pytest.raises(ConfigError, match="head_dim=32; expected"):
        LlamaConfig.from_hf(transformers.LlamaConfig(**base, head_dim=32))


def test_bad_inputs():
    model = CausalLM(LlamaConfig(vocab_size=VOCAB, max_position_embeddings=16))
    with pytest.raises(ShapeError, match=r"non-empty prompt .* got \(1, 0\)"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ShapeError, match="prompt length 10 \\+ max_new_tokens 7 = 17 exceeds max_position_emb"):
        model.generate(ids(1, 10), 7)
    with pytest.raises(ConfigError, match=f"token id {VOCAB} is out of range: expected 0 .. {VOCAB - 1}"):
        model.generate(torch.tensor([[1, VOCAB]]), 2)
    with pytest.raises(ConfigError, match="token id -1 is out of range"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ConfigError, match="max_new_tokens must be a positive integer, got 0"):
        model.generate(ids(1, 3), 0)
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        model.generate(ids(1, 3), 2, temperature=-1.0)
    with pytest.raises(ConfigError, match="top_k must be a positive integer or None, got 0"):
        model.generate(ids(1, 3), 2, temperature=1.0, top_k=0)
    with pytest.raises(ConfigError, match="generate needs left padding"):
        model.generate(ids(1, 3), 2, attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ShapeError, match=r"input_ids must be integer token ids .* torch.float32 \(3,\)"):
        model(torch.zeros(3))
    with pytest.raises(ShapeError, match=r"attention_mask has shape \(1, 3\); expected .* = \(1, 4\)"):
        model(ids(1, 4), attention_mask=torch.ones(1, 3))
    _, cache = model(ids(2, 3), use_cache=True)
    with pytest.raises(ShapeError, match="past_key_values has 1 layers; expected 2"):
        model(ids(2, 1), past_key_values=cache[:1])
    with pytest.raises(ShapeError, match=r"past_key_values tensors must all have shape \(1, 2, 3, 16\)"):
        model(ids(1, 1), past_key_values=cache)


def test_bad_state_dicts(hf):
    model = CausalLM(LlamaConfig.from_hf(hf.config))
    state = hf.state_dict()
    with pytest.raises(CheckpointError, match="lacks 'model.layers.1.mlp.down_proj.weight'; expected a Hugging"):
        load_hf_state_dict(model, {k: v for k, v in state.items() if k != "model.layers.1.mlp.down_proj.weight"})
    with pytest.raises(CheckpointError, match="unexpected key 'model.layers.2.mlp.up_proj.weight'"):
        load_hf_state_dict(model, {**state, "model.layers.2.mlp.up_proj.weight": torch.zeros(96, 64)})
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has shape \(63,\); expected \(64,\)"):
        load_hf_state_dict(model, {**state, "model.norm.weight": torch.ones(63)})
    tied_model = CausalLM(LlamaConfig(**{**vars(model.config), "tie_word_embeddings": True}))
    with pytest.raises(CheckpointError, match="'lm_head.weight' different from 'model.embed_tokens.weight'"):
        load_hf_state_dict(tied_model, state)
    load_hf_state_dict(model, {**state, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)})
