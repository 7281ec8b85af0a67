"""LoRA adapters against PEFT on a tiny random Hugging Face Llama, and on the zoo's DiT and ICL transformer."""

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from zoo.core.errors import CheckpointError, ConfigError
from zoo.dit.model import dit
from zoo.icl.model import ICLTransformer
from zoo.lora import (
    PRESETS,
    LoRALinear,
    apply_lora,
    load_adapter,
    load_lora_state_dict,
    lora_parameter_count,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora,
    save_adapter,
    unmerge_lora,
)

pytestmark = pytest.mark.usefixtures("one_thread")

R, ALPHA = 4, 8
SHA = "a" * 64


def llama(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=128, max_position_embeddings=32,
                         attn_implementation="eager")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(seed))


def randomize_b(model: nn.Module, seed: int = 2) -> None:
    """Non-zero B everywhere, so an adapted model differs from its base."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)


def adapted_llama(targets="partial") -> LlamaForCausalLM:
    model = llama()
    apply_lora(model, targets, r=R, alpha=ALPHA)
    randomize_b(model)
    return model


# -- the layer against its formula --------------------------------------------------------------
def test_layer_is_w0_plus_scaled_ba():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 5).double(), r=3, alpha=6)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 6, dtype=torch.float64)
    w0, b = layer.base_layer.weight, layer.base_layer.bias
    expected = x @ (w0 + (6 / 3) * layer.lora_B @ layer.lora_A).T + b
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_init_is_kaiming_uniform_a_and_zero_b():
    base = nn.Linear(16, 8)
    torch.manual_seed(5)
    layer = LoRALinear(base, r=4)
    torch.manual_seed(5)
    reference = torch.empty(4, 16)
    nn.init.kaiming_uniform_(reference, a=math.sqrt(5))
    assert torch.equal(layer.lora_A, reference)
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(16)
    assert torch.equal(layer.lora_B, torch.zeros(8, 4))
    assert layer.base_layer is base and not base.weight.requires_grad and not base.bias.requires_grad


def test_dropout_acts_on_the_adapter_input_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), r=2, alpha=2, dropout=0.5).train()
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 8)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    expected = layer.base_layer(x) + dropped @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    layer.eval()
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ layer.delta_weight().T, rtol=0, atol=1e-6)


# -- equality with PEFT ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("preset", ["partial", "full"])
def test_outputs_and_gradients_equal_peft(preset):
    base = llama()
    ours = copy.deepcopy(base)
    names = apply_lora(ours, preset, r=R, alpha=ALPHA)
    theirs = get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=list(PRESETS[preset]),
                                             lora_dropout=0.0))
    assert len(names) == 2 * len(PRESETS[preset])
    assert all(name.rpartition(".")[2] in PRESETS[preset] for name in names)

    torch.manual_seed(3)
    ours_layers = dict(ours.named_modules())
    with torch.no_grad():
        for name in names:
            peft_layer = theirs.base_model.model.get_submodule(name)
            peft_layer.lora_B["default"].weight.normal_(0, 0.1)
            ours_layers[name].lora_A.copy_(peft_layer.lora_A["default"].weight)
            ours_layers[name].lora_B.copy_(peft_layer.lora_B["default"].weight)
    mark_only_lora_as_trainable(ours)
    assert lora_parameter_count(ours) == theirs.get_nb_trainable_parameters()[0]
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == lora_parameter_count(ours)

    ids = tokens()
    out_ours, out_theirs = ours(ids, labels=ids), theirs(input_ids=ids, labels=ids)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=0, atol=1e-6)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    for name in names:
        peft_layer = theirs.base_model.model.get_submodule(name)
        for ab in ("A", "B"):
            ours_grad = getattr(ours_layers[name], f"lora_{ab}").grad
            theirs_grad = getattr(peft_layer, f"lora_{ab}")["default"].weight.grad
            torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-6)
    assert all(p.grad is None for n, p in ours.named_parameters() if "lora_" not in n)


def test_zero_b_gives_exactly_the_base_model():
    base = llama()
    ours = copy.deepcopy(base)
    apply_lora(ours, "full", r=R, alpha=ALPHA)
    ids = tokens()
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, base(ids).logits)


def test_merge_equals_unmerged_and_unmerge_restores_w0():
    model = adapted_llama("full")
    w0 = {name: layer.base_layer.weight.clone() for name, layer in model.named_modules()
          if isinstance(layer, LoRALinear)}
    ids = tokens()
    with torch.no_grad():
        unmerged = model(ids).logits
        merge_lora(model)
        merge_lora(model)  # a second merge is a no-op
        merged = model(ids).logits
        unmerge_lora(model)
    assert all(not layer.merged for layer in model.modules() if isinstance(layer, LoRALinear))
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-6)
    for name, weight in w0.items():
        torch.testing.assert_close(model.get_submodule(name).base_layer.weight, weight, rtol=0, atol=1e-6)


def test_merged_forward_uses_only_the_merged_weight():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 4), r=2)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 8)
    layer.merge()
    with torch.no_grad():
        layer.lora_B.zero_()  # a merged layer no longer reads its adapter
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)


# -- state dicts and adapter checkpoints ------------------------------------------------------------
def test_lora_state_dict_round_trip():
    source = adapted_llama()
    state = lora_state_dict(source)
    assert state and all(key.endswith((".lora_A", ".lora_B")) for key in state)
    assert len(state) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    target = llama()
    apply_lora(target, "partial", r=R, alpha=ALPHA)
    merge_lora(target)  # loading into merged layers keeps them merged and right
    assert load_lora_state_dict(target, state) == list(state)
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(target(ids).logits, source(ids).logits, rtol=0, atol=1e-6)


def test_load_lora_state_dict_errors_name_the_key():
    model = llama()
    apply_lora(model, "partial", r=R, alpha=ALPHA)
    state = lora_state_dict(model)
    key = next(iter(state))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.q_proj\.lora_A' has shape \(2, 64\), "
                                              r"expected \(4, 64\)"):
        load_lora_state_dict(model, {**state, key: torch.zeros(2, 64)})
    with pytest.raises(CheckpointError, match=r"key 'model\.norm\.lora_A', which is no adapter"):
        load_lora_state_dict(model, {**state, "model.norm.lora_A": torch.zeros(1)})
    partial = {k: v for k, v in state.items() if k != key}
    with pytest.raises(CheckpointError, match=r"lacks key 'model\.layers\.0\.self_attn\.q_proj\.lora_A'"):
        load_lora_state_dict(model, partial)
    assert key not in load_lora_state_dict(model, partial, strict=False)


def test_adapter_checkpoint_names_its_base(tmp_path):
    source = adapted_llama("full")
    config = {"target_modules": "full", "r": R, "alpha": ALPHA, "dropout": 0.0}
    path = tmp_path / "adapter.pt"
    save_adapter(path, source, "tiny-llama", SHA, config)
    fresh = llama()
    info = load_adapter(path, fresh, SHA)  # adds the adapters from the saved config
    assert info == {"base_name": "tiny-llama", "base_sha256": SHA, "config": config}
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, source(ids).logits, rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match=f"trained on base 'tiny-llama' \\(sha256 {SHA}\\), "
                                              f"not on this base \\(sha256 {'b' * 64}\\)"):
        load_adapter(path, llama(), "b" * 64)


def test_adapter_file_errors(tmp_path):
    model = adapted_llama()
    with pytest.raises(CheckpointError, match="'.*missing.pt' does not exist"):
        load_adapter(tmp_path / "missing.pt", model, SHA)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a LoRA adapter file"):
        load_adapter(garbage, model, SHA)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="is not a LoRA adapter file"):
        load_adapter(other, model, SHA)
    with pytest.raises(ConfigError, match=r"config\['dtype'\] is a dtype; expected plain types"):
        save_adapter(tmp_path / "a.pt", model, "tiny-llama", SHA, {"dtype": torch.float32})
    with pytest.raises(ConfigError, match="has no LoRA layers to save"):
        save_adapter(tmp_path / "a.pt", llama(), "tiny-llama", SHA, {})


# -- other zoo models --------------------------------------------------------------------------------
def jitter(model: nn.Module) -> nn.Module:
    """Random weights everywhere (DiT zero-initialises its output), so 'equals the base' is not 0 == 0."""
    torch.manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("family", ["dit", "icl"])
def test_zoo_models_zero_b_equals_base_and_adapters_train(family):
    if family == "dit":
        base = jitter(dit("DiT-tiny", 2, input_size=8, in_channels=1, num_classes=10))
        torch.manual_seed(5)
        inputs = (torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 9]))
    else:
        base = jitter(ICLTransformer(n_dims=3, n_positions=8, width=32, depth=2, heads=2))
        torch.manual_seed(5)
        inputs = (torch.randn(2, 8, 3), torch.randn(2, 8))
    model = copy.deepcopy(base)
    names = apply_lora(model, ["qkv", "attn.proj" if family == "dit" else "proj"], r=2, alpha=4)
    assert len(names) == 4 and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    with torch.no_grad():
        assert torch.equal(model(*inputs), base(*inputs))
    randomize_b(model)
    mark_only_lora_as_trainable(model)
    out = model(*inputs)
    assert not torch.allclose(out, base(*inputs))
    out.square().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {f"{n}.lora_{ab}" for n in names for ab in "AB"}


# -- bad input --------------------------------------------------------------------------------------
def test_bad_input_is_one_clear_error():
    model = llama()
    with pytest.raises(ConfigError, match=r"target 'query' matches no module of LlamaForCausalLM; its linear layers "
                                          r"are: model\.layers\.0\.self_attn\.q_proj, .*"):
        apply_lora(model, ["q_proj", "query"])
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # nothing replaced on error
    with pytest.raises(ConfigError, match=r"matches 'model\.layers\.0\.mlp', a LlamaMLP; expected an nn\.Linear"):
        apply_lora(model, "mlp")
    with pytest.raises(ConfigError, match=r"rank r must be a positive integer, got 0"):
        apply_lora(model, r=0)
    with pytest.raises(ConfigError, match=r"alpha must be a positive number, got -1"):
        apply_lora(model, alpha=-1)
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1\.0"):
        apply_lora(model, dropout=1.0)
    with pytest.raises(ConfigError, match=r"non-empty list of module names, got \[\]"):
        apply_lora(model, [])
    apply_lora(model, "q_proj")
    with pytest.raises(ConfigError, match=r"'model\.layers\.0\.self_attn\.q_proj' already has a LoRA adapter"):
        apply_lora(model, "q_proj")
    attention = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ConfigError, match=r"inside nn\.MultiheadAttention"):
        apply_lora(attention, "out_proj")
