"""The LoRA callback (zoo.lora.callback) through the real CLI: on a tiny ICL transformer fit here
and on the shipped DiT; only the adapters train, resume is exact, bad input ends in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import zoo
from tests.conftest import run_cli
from zoo.core.cli import main
from zoo.lora import LoRA, LoRALinear

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = "configs/lora/icl_linear_to_relu3.yaml"
QUIET = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0", "--trainer.log_every_n_steps=1"]
TINY = ["--model.width=16", "--model.depth=1", "--data.num_val=32", "--data.num_test=32", "--data.batch_size=8"]
LORA = ["--trainer.callbacks.init_args.r=2", "--trainer.callbacks.init_args.alpha=4"]
ADAPTERS = {f"net.blocks.0.{name}.lora_{ab}" for name in ("qkv", "proj") for ab in "AB"}


def fit(root, *extra: str, config: str = CONFIG):
    return run_cli("fit", "--config", config, f"--trainer.default_root_dir={root}", *QUIET, *TINY, *extra)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny in-context regressor fit 2 steps on linear tasks: ``(checkpoint path, its weights)``."""
    root = tmp_path_factory.mktemp("base")
    fit(root, "--trainer.max_steps=2", config="configs/icl/linear_d5.yaml")
    path = root / "checkpoints" / "last.ckpt"
    return path, torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_only_the_adapters_train_and_the_base_stays_bit_identical(base, tmp_path):
    path, weights = base
    cli = fit(tmp_path, f"--trainer.callbacks.init_args.base={path}", *LORA, "--trainer.max_steps=3")
    model = cli.model
    assert cli.trainer.global_step == 3
    assert {n for n, p in model.named_parameters() if p.requires_grad} == ADAPTERS
    assert all(isinstance(model.get_submodule(n.rpartition(".")[0]), LoRALinear) for n in ADAPTERS)
    state = model.state_dict()
    for key, value in weights.items():  # base_layer.* hold the base's weights, unchanged
        ours = key if key in state else key.replace(".qkv.", ".qkv.base_layer.").replace(".proj.", ".proj.base_layer.")
        assert torch.equal(state[ours], value), key
    assert all(state[n].abs().sum() > 0 for n in ADAPTERS if n.endswith("lora_B")), "B left zero: nothing trained"
    width, r = 16, 2  # qkv: r (16 + 48), proj: r (16 + 16)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == r * ((width + 3 * width) + 2 * width)
    logged = yaml.safe_load((Path(cli.trainer.log_dir) / "hparams.yaml").read_text())
    assert logged["params/lora"] == logged["params/trainable"] == r * 6 * width and logged["params/lora_layers"] == 2


def test_resume_from_a_checkpoint_keeps_the_adapters_exactly(base, tmp_path):
    path = base[0]
    steps = [f"--trainer.callbacks.init_args.base={path}", *LORA, "--trainer.max_steps=6",
             "--checkpoint.monitor=null", "--checkpoint.filename=step-{step}", "--checkpoint.every_n_train_steps=3"]
    reference = fit(tmp_path / "reference", *steps)
    crash = tmp_path / "crash.yaml"  # the LoRA callback and one that raises after step 4 (last checkpoint: step 3)
    crash.write_text("trainer:\n  callbacks:\n"
                     f"    - class_path: zoo.lora.LoRA\n      init_args: {{base: {path}, target_modules: [qkv, proj], "
                     "r: 2, alpha: 4}\n"
                     "    - class_path: tests.helpers.RaiseAt\n      init_args: {step: 4}\n")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "crashed", *steps, "--config", str(crash))
    resumed = fit(tmp_path / "crashed", *steps, "--ckpt_path=last")
    assert resumed.trainer.global_step == 6
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and ADAPTERS <= set(a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    saved = torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.equal(saved["state_dict"][k], b[k]) for k in ADAPTERS)


def test_test_from_the_checkpoint_evaluates_the_adapted_model(base, tmp_path):
    path = base[0]
    trained = fit(tmp_path, f"--trainer.callbacks.init_args.base={path}", *LORA, "--trainer.max_steps=2")
    expected = trained.trainer.test(trained.model, datamodule=trained.datamodule, verbose=False)[0]["test/nmse"]
    tested = run_cli("test", "--config", CONFIG, f"--trainer.default_root_dir={tmp_path}", *QUIET, *TINY, *LORA,
                     f"--trainer.callbacks.init_args.base={path}", "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt"))
    assert tested.trainer.callback_metrics["test/nmse"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--trainer.callbacks.init_args.target_modules=[qkv,query]"],
     "LoRA target 'query' matches no module of InContextRegression; its linear layers are: net.read_in, "
     "net.blocks.0.qkv, net.blocks.0.proj"),
    (["--trainer.callbacks.init_args.r=0"], "LoRA rank r must be a positive integer, got 0"),
    (["--trainer.callbacks.init_args.base=no-such-base"],
     "LoRA base 'no-such-base' is neither a registered name nor a checkpoint file"),
    (["--model.width=32"], "does not fit the configured InContextRegression (size mismatch for net.positions"),
])
def test_bad_input_ends_in_one_line(base, tmp_path, capsys, extra, message):
    args = ["fit", "--config", CONFIG, f"--trainer.default_root_dir={tmp_path}", *QUIET, *TINY,
            f"--trainer.callbacks.init_args.base={base[0]}", "--trainer.max_steps=1", *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], lines


def test_resuming_with_other_adapters_ends_in_one_line(base, tmp_path, capsys):
    fit(tmp_path, f"--trainer.callbacks.init_args.base={base[0]}", *LORA, "--trainer.max_steps=1")
    with pytest.raises(SystemExit):
        main(["fit", "--config", CONFIG, f"--trainer.default_root_dir={tmp_path}", *QUIET, *TINY,
              f"--trainer.callbacks.init_args.base={base[0]}", "--trainer.callbacks.init_args.r=3",
              "--trainer.max_steps=2", "--ckpt_path=last"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    assert ("the checkpoint being loaded holds LoRA adapters of rank 2 on 2 layers (net.blocks.0.qkv, "
            "net.blocks.0.proj), but the LoRA callback") in lines[0] and "makes LoRA adapters of rank 3" in lines[0]


def test_full_finetune_loads_the_base_and_trains_every_weight(base, tmp_path):
    path, weights = base
    cli = fit(tmp_path, f"--trainer.callbacks.init_args.base={path}", "--trainer.callbacks.init_args.full_finetune=true",
              "--trainer.max_steps=1")
    state = cli.model.state_dict()
    assert set(state) == set(weights) and all(p.requires_grad for p in cli.model.parameters())
    assert all(not torch.equal(state[k], weights[k]) for k in weights if k.endswith("weight")), "every weight trained"


def test_constructor_checks():
    with pytest.raises(zoo.core.errors.ConfigError, match="rank r must be a positive integer, got -1"):
        LoRA(r=-1)
    with pytest.raises(zoo.core.errors.ConfigError, match="full_finetune=true needs a base"):
        LoRA(full_finetune=True)
    with pytest.raises(zoo.core.errors.ConfigError, match=r"non-empty list of module names, got \[\]"):
        LoRA(target_modules=[])


@pytest.mark.skipif("dit-digits-tiny" not in zoo.list_pretrained(), reason="dit-digits-tiny is not registered")
def test_dit_adapters_train_in_the_network_and_stay_frozen_in_its_ema_copy(tmp_path):
    shipped = torch.load(zoo.core.registry.checkpoint_path("dit-digits-tiny"), map_location="cpu",
                         weights_only=True)["state_dict"]
    cli = run_cli("fit", "--config", "configs/lora/dit_digits_mirror.yaml", f"--trainer.default_root_dir={tmp_path}",
                  *QUIET, "--trainer.max_steps=2", "--data.batch_size=16", "--trainer.limit_val_batches=1")
    model = cli.model
    adapters = {f"{copy}.blocks.{i}.attn.{name}.lora_{ab}" for copy in ("net", "ema") for i in (0, 1)
                for name in ("qkv", "proj") for ab in "AB"}
    assert {n for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))} == adapters
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n in adapters if n.startswith("net.")}
    state = model.state_dict()
    for key, value in shipped.items():
        if key.startswith("net."):
            ours = key if key in state else key.replace(".qkv.", ".qkv.base_layer.").replace(".proj.", ".proj.base_layer.")
            assert torch.equal(state[ours], value), key
    assert all(state[n].abs().sum() > 0 for n in adapters if n.endswith("lora_B")), "the EMA averages the adapters"
