"""zoo.deal.transplant: a transplant copies exactly the chosen tensors from the teacher (every
state-dict tensor compared) for the zoo CausalLM and a tiny Hugging Face LlamaForCausalLM, site
strings, the changed-parameter share against a hand count, and one-line errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.core.errors import ConfigError
from zoo.deal.transplant import (
    changed_parameter_share,
    decoder_layers,
    format_site,
    parse_site,
    parse_sites,
    site_parameter_names,
    transplant,
)
from zoo.nn.causal_lm import CausalLM, LlamaConfig

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN, INTER, LAYERS, VOCAB = 32, 48, 3, 50


def zoo_lm(seed: int, tie: bool = True, **overrides) -> CausalLM:
    torch.manual_seed(seed)
    config = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    model = CausalLM(LlamaConfig(**{**config, **overrides}))
    with torch.no_grad():
        for p in model.parameters():  # norms too, so that every tensor differs between two seeds
            p.normal_(0, 0.1)
    return model


def hf_lm(seed: int) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=0, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_transplant(student: nn.Module, teacher: nn.Module, sites, expected_prefixes: list[str]) -> None:
    before_student, before_teacher = snapshot(student), snapshot(teacher)
    child = transplant(student, teacher, sites)
    assert child is not student and type(child) is type(student)
    chosen = [k for k in before_student if any(k.startswith(p) for p in expected_prefixes)]
    assert chosen, "the sites select some tensors"
    child_state, teacher_state = child.state_dict(), teacher.state_dict()
    assert child_state.keys() == before_student.keys()
    for key, value in child_state.items():
        if key in chosen:
            assert torch.equal(value, teacher_state[key]), key
            assert not torch.equal(value, before_student[key]), key  # the two models really differ there
        else:
            assert torch.equal(value, before_student[key]), key
    # student and teacher untouched, and the child shares no storage with either
    for model, before in ((student, before_student), (teacher, before_teacher)):
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key
    child_ptrs = {p.data_ptr() for p in child.parameters()}
    assert not child_ptrs & {p.data_ptr() for p in teacher.parameters()}
    assert not child_ptrs & {p.data_ptr() for p in student.parameters()}
    with torch.no_grad():
        next(child.model.layers[0].mlp.parameters()).add_(1.0)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before_teacher[key]), key
    assert sorted(site_parameter_names(student, sites)) == sorted(
        k for k in chosen if k in dict(student.named_parameters()))


@pytest.mark.parametrize("family", ["zoo", "hf"])
def test_transplant_copies_exactly_the_chosen_tensors(family):
    make = zoo_lm if family == "zoo" else hf_lm
    student, teacher = make(0), make(1)
    check_transplant(student, teacher, [(1, "mlp")], ["model.layers.1.mlp."])
    check_transplant(student, teacher, [(0, "mlp.gate_proj"), (2, "self_attn.q_proj")],
                     ["model.layers.0.mlp.gate_proj.", "model.layers.2.self_attn.q_proj."])
    # overlapping sites, repeats and strings are fine
    check_transplant(student, teacher, [(1, "mlp"), (1, "mlp.gate_proj"), "1:mlp", "2:mlp.down_proj"],
                     ["model.layers.1.mlp.", "model.layers.2.mlp.down_proj."])
    check_transplant(student, teacher, "0-1:mlp.up_proj", ["model.layers.0.mlp.up_proj.", "model.layers.1.mlp.up_proj."])
    # the whole decoder layer, norms included
    check_transplant(student, teacher, [(2, "")], ["model.layers.2."])


def test_transplant_changes_outputs_and_keeps_tied_embeddings():
    student, teacher = zoo_lm(0), zoo_lm(1)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    child = transplant(student, teacher, [(i, "") for i in range(LAYERS)])
    child.model.embed_tokens.weight.data.copy_(teacher.model.embed_tokens.weight)  # the rest of the teacher
    child.model.norm.weight.data.copy_(teacher.model.norm.weight)
    assert child.lm_head.weight is child.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(child(ids), teacher(ids), rtol=0, atol=0)
        assert not torch.equal(transplant(student, teacher, [(1, "mlp")])(ids), student(ids))


def test_hf_teacher_into_zoo_student():
    """The same layout in both: a zoo student takes a Hugging Face teacher's MLP."""
    teacher = hf_lm(3)
    student = zoo_lm(0, tie=False, rms_norm_eps=1e-6)
    child = transplant(student, teacher, ["1:mlp"])
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert torch.equal(getattr(child.model.layers[1].mlp, name).weight,
                           getattr(teacher.model.layers[1].mlp, name).weight)


def test_changed_parameter_share_against_hand_count():
    model = zoo_lm(0)  # tied: the embedding counts once
    embed, norm = VOCAB * HIDDEN, HIDDEN
    kv = 2 * (HIDDEN // 4)
    attn = HIDDEN * HIDDEN * 2 + HIDDEN * kv * 2
    mlp = 3 * HIDDEN * INTER
    layer = attn + mlp + 2 * norm
    total = embed + LAYERS * layer + norm
    assert sum(p.numel() for p in model.parameters()) == total
    assert changed_parameter_share(model, [(1, "mlp")]) == pytest.approx(mlp / total, abs=1e-15)
    assert changed_parameter_share(model, [(0, "mlp"), (0, "mlp.gate_proj"), (2, "mlp.gate_proj")]) == pytest.approx(
        (mlp + HIDDEN * INTER) / total, abs=1e-15)
    assert changed_parameter_share(model, [(0, "self_attn.k_proj")]) == pytest.approx(HIDDEN * kv / total, abs=1e-15)
    assert changed_parameter_share(model, [(i, "") for i in range(LAYERS)]) == pytest.approx(
        LAYERS * layer / total, abs=1e-15)
    untied = zoo_lm(0, tie=False)
    assert changed_parameter_share(untied, [(1, "mlp")]) == pytest.approx(mlp / (total + embed), abs=1e-15)
    hf = hf_lm(0)
    assert changed_parameter_share(hf, ["1:mlp"]) == pytest.approx(mlp / (total + embed), abs=1e-15)
    assert site_parameter_names(model, [(2, "mlp.down_proj")]) == ["model.layers.2.mlp.down_proj.weight"]


def test_site_strings():
    assert parse_site("12:mlp.gate_proj") == (12, "mlp.gate_proj")
    assert parse_site(" 3 : self_attn ") == (3, "self_attn")
    assert parse_site("7") == (7, "")
    assert format_site((12, "mlp.gate_proj")) == "12:mlp.gate_proj"
    assert format_site((7, "")) == "7"
    for text in ("0:mlp", "5:self_attn.q_proj", "9"):
        assert format_site(parse_site(text)) == text
    assert parse_sites("2-4:mlp,0:self_attn") == [(2, "mlp"), (3, "mlp"), (4, "mlp"), (0, "self_attn")]
    for bad in ("mlp", "-1:mlp", "x:mlp", "1:mlp..gate", "1:mlp/gate"):
        with pytest.raises(ConfigError, match="site"):
            parse_site(bad)
    for bad in ("4-2:mlp", "1:mlp,,2:mlp", "a-b:mlp"):
        with pytest.raises(ConfigError):
            parse_sites(bad)


def test_errors_are_one_line_config_errors():
    student, teacher = zoo_lm(0), zoo_lm(1)
    cases = [
        ([(3, "mlp")], r"layer index 3 is out of range .* 0 \.\. 2"),
        ([(-1, "mlp")], "layer index -1 is out of range"),
        ([(0, "mlp.gate")], "unknown module 'mlp.gate'.*expected one of .*mlp.gate_proj"),
        ([(0, "mlp.gate_proj.weight")], "unknown module 'mlp.gate_proj.weight'"),
        ([("0", "mlp")], "a site must be"),
        ([(True, "mlp")], "a site must be"),
        ([(0, "mlp", 1)], "a site must be"),
    ]
    for sites, match in cases:
        for fn in (lambda: transplant(student, teacher, sites), lambda: site_parameter_names(student, sites),
                   lambda: changed_parameter_share(student, sites)):
            with pytest.raises(ConfigError, match=match) as info:
                fn()
            assert "\n" not in str(info.value)
    # a teacher of another architecture
    wide = zoo_lm(1, intermediate_size=INTER + 8)
    with pytest.raises(ConfigError, match=r"gate_proj.weight' has shape \(56, 32\) in the teacher but \(48, 32\)"):
        transplant(student, wide, [(1, "mlp")])
    shallow = zoo_lm(1, num_hidden_layers=2)
    with pytest.raises(ConfigError, match="out of range for the teacher"):
        transplant(student, shallow, [(2, "mlp")])
    # a model with neither layout
    with pytest.raises(ConfigError, match="Sequential has no decoder layers at model.model.layers"):
        decoder_layers(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="Linear has no decoder layers"):
        transplant(nn.Linear(2, 2), teacher, [(0, "mlp")])
    # a module without parameters
    hf = hf_lm(0)
    with pytest.raises(ConfigError, match="without parameters"):
        transplant(hf, hf_lm(1), [(0, "mlp.act_fn")])
