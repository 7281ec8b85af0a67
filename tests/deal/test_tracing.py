"""zoo.deal.tracing: corrupt-and-restore causal tracing (ROME). Sanity identities (restoring a whole
layer's output gives the clean score, noise 0 changes nothing, positions before the corruption carry
no effect), a behaviour wired into one layer's MLP is found there and nowhere else, a tiny Hugging
Face LlamaForCausalLM with the same weights gives the same trace, hooks are always removed, the
plot, and one-line errors. Float64 models throughout, so identities hold to ~1e-12."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.core.errors import ConfigError, ShapeError
from zoo.deal.tracing import KINDS, causal_trace, plot_trace, token_probability
from zoo.nn.causal_lm import CausalLM, LlamaConfig

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
VOCAB, HIDDEN, INTER, LAYERS, T = 50, 32, 48, 4, 6
IDS = torch.tensor([5, 17, 3, 42, 8, 21])


def zoo_lm(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                                 num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=False, max_position_embeddings=64)).to(F64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3)
    return model.eval()


def hf_copy(model: CausalLM) -> nn.Module:
    """A LlamaForCausalLM with the zoo model's weights (same state-dict keys)."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=0,
        attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(config).to(F64).eval()
    hf.load_state_dict(model.state_dict())
    return hf


def clean_argmax_score(model: nn.Module, position: int = -1):
    """Score: probability of the token the clean model predicts at ``position``."""
    with torch.no_grad():
        out = model(IDS[None])
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return token_probability(int(logits[0, position].argmax()), position)


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def lm():
    return zoo_lm()


# -- sanity identities -------------------------------------------------------------------------
def test_restoring_a_whole_layer_everywhere_gives_the_clean_score(lm):
    score = clean_argmax_score(lm)
    result = causal_trace(lm, IDS, score, kinds=("layer",), per_position=False, samples=4)
    assert result.scores["layer"].shape == (LAYERS,)
    assert result.corrupted_score < result.clean_score - 1e-3, "the noise does change the score"
    torch.testing.assert_close(result.scores["layer"], torch.full((LAYERS,), result.clean_score, dtype=F64),
                               rtol=0, atol=1e-12)
    # per position: the last layer's output at the scored (last) position is all the head reads
    per = causal_trace(lm, IDS[None], score, kinds=("layer",), samples=4)
    assert per.scores["layer"].shape == (LAYERS, T)
    assert abs(float(per.scores["layer"][-1, -1]) - per.clean_score) < 1e-12
    assert per.corrupted_score == result.corrupted_score and per.clean_score == result.clean_score


def test_noise_zero_changes_nothing(lm):
    score = clean_argmax_score(lm)
    for per_position in (True, False):
        result = causal_trace(lm, IDS, score, noise=0.0, samples=2, per_position=per_position)
        assert result.kinds == list(KINDS)
        assert abs(result.corrupted_score - result.clean_score) < 1e-12
        for kind, table in result.scores.items():
            assert torch.allclose(table, torch.full_like(table, result.clean_score), rtol=0, atol=1e-12), kind


def test_positions_before_the_corruption_carry_no_effect(lm):
    """Causal attention: states before the first corrupted token are clean already, so restoring
    them changes nothing (for every kind and layer); the trace is deterministic given the seed."""
    score = clean_argmax_score(lm)
    result = causal_trace(lm, IDS, score, corrupt_positions=[2, -1], samples=3, seed=7)
    assert result.corrupt_positions == [2, T - 1]
    for kind, table in result.scores.items():
        assert torch.allclose(table[:, :2], torch.full_like(table[:, :2], result.corrupted_score), rtol=0,
                              atol=1e-12), kind
    # while restoring at or after the corruption does change the score
    assert (result.scores["layer"][:, 2:] - result.corrupted_score).abs().max() > 1e-4
    again = causal_trace(lm, IDS, score, corrupt_positions=[2, 5], samples=3, seed=7, batch_size=4)  # 1 position/pass
    assert again.corrupted_score == result.corrupted_score
    for kind in KINDS:
        torch.testing.assert_close(again.scores[kind], result.scores[kind], rtol=0, atol=1e-12)
    other = causal_trace(lm, IDS, score, corrupt_positions=[2, 5], samples=3, seed=8, kinds=("mlp",))
    assert other.corrupted_score != result.corrupted_score


# -- a behaviour wired into one layer ----------------------------------------------------------
WIRED = 2


def wired_lm() -> CausalLM:
    """No attention output anywhere and no MLP output except in layer WIRED (scaled up), so the
    logits at position t are ``head(norm(e_t + mlp_WIRED(norm(e_t))))``: the only module between a
    token's embedding and its logits is layer WIRED's MLP at that token's position. Restoring any
    other MLP (whose output is 0 in both runs) or any other position leaves the corrupted run
    bit-for-bit unchanged; restoring the wired one removes the noise from the MLP term (the noisy
    embedding stays in the residual), which raises the score."""
    model = zoo_lm(3)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.o_proj.weight.zero_()
            if i == WIRED:
                layer.mlp.down_proj.weight.mul_(10.0)
            else:
                layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.mul_(4.0)  # sharper predictions: clean probability ~0.5
    return model


def test_behaviour_wired_into_one_mlp_is_found_there():
    model = wired_lm()
    position = 3
    score = clean_argmax_score(model, position)
    mlp_kinds = ("mlp", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    result = causal_trace(model, IDS, score, kinds=mlp_kinds + ("self_attn",), corrupt_positions=[1, position],
                          samples=8)
    assert result.clean_score - result.corrupted_score > 0.2
    effect = result.indirect_effect("mlp")
    assert result.argmax("mlp") == (WIRED, position)
    assert float(effect[WIRED, position]) > 0.5 * (result.clean_score - result.corrupted_score)
    # the MLP output is the whole MLP path, so restoring it or its last projection is the same
    assert abs(float(result.scores["mlp"][WIRED, position] - result.scores["mlp.down_proj"][WIRED, position])) < 1e-12
    for kind in mlp_kinds + ("self_attn",):
        mask = torch.ones(LAYERS, T, dtype=torch.bool)
        if kind != "self_attn":
            mask[WIRED, position] = False  # the one entry with an effect
        assert (result.indirect_effect(kind)[mask].abs() < 1e-9).all(), kind
    for kind in ("mlp.gate_proj", "mlp.up_proj"):  # half the MLP's input restored: some effect, of either sign
        assert abs(float(result.indirect_effect(kind)[WIRED, position])) > 1e-6
    # a whole layer's output at the scored position is the entire state there: clean exactly, at every layer
    layer = causal_trace(model, IDS, score, kinds=("layer",), corrupt_positions=[1, position], samples=8).scores["layer"]
    assert (layer[:, position] - result.clean_score).abs().max() < 1e-9
    assert (layer[:, [0, 1, 2, 4, 5]] - result.corrupted_score).abs().max() < 1e-9
    # not per position, and the layer summary
    whole = causal_trace(model, IDS, score, kinds=("mlp",), corrupt_positions=[1, position], samples=8,
                         per_position=False)
    assert whole.argmax("mlp") == WIRED == int(result.layer_effect("mlp").argmax())
    others = [i for i in range(LAYERS) if i != WIRED]
    assert (whole.indirect_effect("mlp")[others].abs() < 1e-9).all()
    assert abs(float(whole.scores["mlp"][WIRED] - result.scores["mlp"][WIRED, position])) < 1e-9


# -- Hugging Face ------------------------------------------------------------------------------
def test_hf_llama_gives_the_same_trace(lm):
    hf = hf_copy(lm)
    with torch.no_grad():
        torch.testing.assert_close(hf(IDS[None]).logits, lm(IDS[None]), rtol=0, atol=1e-5)
    score = clean_argmax_score(lm)
    ours = causal_trace(lm, IDS, score, corrupt_positions=[1, 2, 4], samples=3)
    theirs = causal_trace(hf, IDS, score, corrupt_positions=[1, 2, 4], samples=3)
    assert abs(ours.clean_score - theirs.clean_score) < 1e-5
    assert abs(ours.corrupted_score - theirs.corrupted_score) < 1e-5
    assert ours.noise_std == theirs.noise_std
    for kind in KINDS:
        torch.testing.assert_close(theirs.scores[kind], ours.scores[kind], rtol=0, atol=1e-5)
    assert hooks_left(hf) == 0


# -- hooks, modes, plot, errors ----------------------------------------------------------------
def test_hooks_removed_and_mode_restored_even_on_error():
    model = zoo_lm()
    model.train()
    model.model.layers[1].eval()
    before = model.eval()(IDS[None]).detach()
    model.train()
    model.model.layers[1].eval()
    modes = [m.training for m in model.modules()]
    causal_trace(model, IDS, clean_argmax_score(model), samples=2)
    assert hooks_left(model) == 0 and [m.training for m in model.modules()] == modes
    calls = []

    def failing(logits: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("score failed")
        return logits[:, -1, 0]

    with pytest.raises(RuntimeError, match="score failed"):
        causal_trace(model, IDS, failing, samples=2)
    assert hooks_left(model) == 0 and [m.training for m in model.modules()] == modes
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(IDS[None]), before, rtol=0, atol=0)


def test_plot_trace(tmp_path, lm):
    result = causal_trace(lm, IDS, clean_argmax_score(lm), kinds=("layer", "mlp", "mlp.gate_proj"), samples=2,
                          corrupt_positions=[0, 1])
    labels = [f"t{int(i)}" for i in IDS]
    path = plot_trace(result, labels, tmp_path / "plots" / "trace.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flat = causal_trace(lm, IDS, clean_argmax_score(lm), kinds=("mlp",), samples=2, per_position=False)
    assert plot_trace(flat, labels, tmp_path / "flat.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="5 token labels for a prompt of 6 tokens"):
        plot_trace(result, labels[:5], tmp_path / "bad.png")


def test_errors(lm):
    score = clean_argmax_score(lm)
    cases = [
        (dict(kinds=("mlp.gate",)), ConfigError, "unknown trace kind 'mlp.gate'"),
        (dict(kinds=()), ConfigError, "kinds must be"),
        (dict(kinds=("mlp", "mlp")), ConfigError, "kinds must be"),
        (dict(corrupt_positions=[6]), ConfigError, "corrupt position 6 is out of range .* -6 .. 5"),
        (dict(corrupt_positions=[]), ConfigError, "corrupt_positions is empty"),
        (dict(noise=-1.0), ConfigError, "noise must be"),
        (dict(samples=0), ConfigError, "samples must be a positive integer"),
        (dict(kinds=("post_attention_layernorm", "self_attn.k_proj"), samples=1), None, None),
    ]
    for kwargs, error, match in cases:
        if error is None:
            causal_trace(lm, IDS, score, **kwargs)  # any module with a [B, T, ...] output can be traced
            continue
        with pytest.raises(error, match=match) as info:
            causal_trace(lm, IDS, score, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ShapeError, match=r"input_ids must be integer token ids \[T\] or \[1, T\]"):
        causal_trace(lm, IDS.repeat(2, 1), score)
    with pytest.raises(ShapeError, match=r"returned \(1, 6\); expected a tensor \[B=1\]"):
        causal_trace(lm, IDS, lambda logits: logits[:, :, 0], samples=2)
    with pytest.raises(ConfigError, match="Linear has no decoder layers"):
        causal_trace(nn.Linear(2, 2), IDS, score)
    assert hooks_left(lm) == 0
