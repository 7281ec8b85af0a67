"""Causal LM pre-training and LoRA fine-tuning through the CLI (zoo.lora.lm_module)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from lightning.pytorch import Trainer

import zoo
from data_modules.text import TextDataModule
from tests.conftest import run_cli
from zoo.core.cli import main
from zoo.core.registry import build_from_checkpoint, verify_checkpoint
from zoo.lora import CausalLMModule, LoRAFineTune, lora_parameter_count
from zoo.lora.lm_module import unigram_perplexity

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0",
         "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1"]
TINY_DATA = ["--data.block_size=16", "--data.batch_size=4"]


def fit(root, config: str, *extra: str):
    return run_cli("fit", "--config", config, "--trainer.max_steps=3", f"--trainer.default_root_dir={root}",
                   "--trainer.val_check_interval=3", *QUIET, *TINY_DATA, *extra)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny CausalLMModule fit 3 steps through the CLI: ``(checkpoint path, trained weights)``."""
    root = tmp_path_factory.mktemp("base")
    cli = fit(root, "configs/lora/lm_pydoc.yaml", "--model.max_position_embeddings=64")
    assert cli.trainer.global_step == 3
    return root / "checkpoints" / "last.ckpt", {k: v.clone() for k, v in cli.model.state_dict().items()}


def test_causal_lm_fits_and_its_checkpoint_reloads(base):
    path, trained = base
    rebuilt = build_from_checkpoint(verify_checkpoint(path))
    assert type(rebuilt) is CausalLMModule
    assert all(torch.equal(trained[k], v) for k, v in rebuilt.state_dict().items())
    assert rebuilt.model.config.max_position_embeddings == 64 and rebuilt.model.config.vocab_size == 259


def test_perplexity_is_exp_of_the_token_mean_loss_over_the_split(base):
    model = build_from_checkpoint(verify_checkpoint(base[0])).eval()
    dm = TextDataModule(block_size=64, batch_size=64)  # 402 val blocks: the last batch is partial
    dm.setup("test")
    assert len(dm.test_set) % 64
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dm.test_set), 100):
            batch = dm.test_set.__getitems__(list(range(start, min(start + 100, len(dm.test_set)))))
            logits = model(batch["inputs"])
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                                       reduction="sum").item()
            count += batch["labels"].numel()
    assert result["test/loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["test/ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)


def without_adapters(state: dict) -> dict:
    """The base-model weights of a LoRA model's state dict, under the base model's keys."""
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if not k.endswith(("lora_A", "lora_B"))}


def test_lora_fit_changes_only_the_adapters_and_reloads_without_the_base(base, tmp_path):
    path, trained = base
    copy = tmp_path / "base.ckpt"
    shutil.copy(path, copy)
    cli = fit(tmp_path, "configs/lora/finetune_docstrings.yaml", f"--model.base={copy}", "--model.lora_rank=2")
    model = cli.model
    assert type(model) is LoRAFineTune and cli.trainer.global_step == 3
    state = {k: v.detach() for k, v in model.state_dict().items()}
    base_weights = without_adapters(state)
    assert set(base_weights) == set(trained)
    assert all(torch.equal(trained[k], v) for k, v in base_weights.items()), "base weights bit-identical"
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in state.items()), "adapters trained"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers, width = 2, 64  # lm-tiny: q_proj 64 -> 64, v_proj 64 -> 32 (2 KV heads of 16)
    assert trainable == lora_parameter_count(model.model) == layers * 2 * ((64 + 64) + (width + 32))
    assert model.hparams.base_sha256 == zoo.core.registry.sha256(copy)
    copy.unlink()  # the fine-tuned checkpoint rebuilds from its own hyperparameters and weights
    rebuilt = build_from_checkpoint(verify_checkpoint(tmp_path / "checkpoints" / "last.ckpt"))
    assert all(torch.equal(state[k], v) for k, v in rebuilt.state_dict().items())


def test_full_finetune_changes_the_base_weights(base, tmp_path):
    path, trained = base
    cli = fit(tmp_path, "configs/lora/finetune_docstrings.yaml", f"--model.base={path}", "--model.full_finetune=true")
    state = cli.model.state_dict()
    assert set(state) == set(trained) and not any(k.endswith("lora_A") for k in state)
    assert all(not torch.equal(trained[k], state[k]) for k in trained), "every weight trained"
    assert sum(p.numel() for p in cli.model.parameters() if p.requires_grad) == sum(
        p.numel() for p in cli.model.parameters())


@pytest.mark.parametrize("extra, message", [
    (["--model.base=no-such-lm"], "LoRA base 'no-such-lm' is neither a registered name nor a checkpoint file"),
    (["--model.base=digits-cnn"], "LoRA base 'digits-cnn': "),
    (["--model.lora_rank=0"], "LoRA rank r must be a positive integer, got 0"),
    (["--model.lora_targets=[nope]"], "LoRA target 'nope' matches no module of CausalLM"),
])
def test_bad_input_ends_in_one_line(base, tmp_path, capsys, extra, message):
    extra = [f"--model.base={base[0]}", *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/lora/finetune_docstrings.yaml", "--trainer.max_steps=1",
              f"--trainer.default_root_dir={tmp_path}", *QUIET, *TINY_DATA, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0]
    if "digits-cnn" in message:
        assert "holds a ImageClassifier; expected a module whose .model is the zoo's CausalLM" in err[0]


@pytest.mark.skipif("lm-pydoc" not in zoo.list_pretrained(), reason="lm-pydoc is not registered")
def test_shipped_lm_beats_a_unigram_byte_model_on_held_out_topics():
    model = zoo.load_pretrained("lm-pydoc")
    assert type(model) is CausalLMModule
    dm = TextDataModule(block_size=128)
    dm.setup("test")
    windows = dm.test_set.windows
    with torch.no_grad():
        nll = torch.cat([model.token_nll(dm.test_set.__getitems__(list(range(i, min(i + 64, len(windows))))))
                         .flatten() for i in range(0, len(windows), 64)])
    ppl = math.exp(nll.mean().item())
    baseline = unigram_perplexity(dm.split_tokens["train"], dm.split_tokens["test"])
    assert ppl < 0.5 * baseline, (ppl, baseline)
