"""PromptTuneLM through the CLI on the shipped lm-pydoc: only the prompt trains, the checkpoint holds
only the prompt and names its base, a checkpoint for another base and bad arguments end in one line."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from lightning.pytorch import Trainer

import zoo
from data_modules.text import TextDataModule
from tests.conftest import ROOT, run_cli
from zoo.core.cli import main
from zoo.core.errors import CheckpointError
from zoo.core.registry import build_from_checkpoint, pretrained_info, verify_checkpoint
from zoo.prompt_tuning import PromptTuneLM

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = "configs/prompt_tuning/docstrings.yaml"
QUIET = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0",
         "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1"]
TINY = ["--data.block_size=16", "--data.batch_size=4", "--model.num_virtual_tokens=2"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 2-token prompt fit 3 steps on lm-pydoc through the CLI: ``(last.ckpt, the fitted module)``."""
    root = tmp_path_factory.mktemp("prompt")
    with pytest.MonkeyPatch.context() as patch:  # as the function-scoped _repo_root fixture does
        patch.chdir(ROOT)
        patch.setattr(sys, "argv", ["zoo"])
        cli = run_cli("fit", "--config", CONFIG, "--trainer.max_steps=3", "--trainer.val_check_interval=3",
                      f"--trainer.default_root_dir={root}", *QUIET, *TINY)
    assert cli.trainer.global_step == 3
    return root / "checkpoints" / "last.ckpt", cli.model


def test_only_the_prompt_trains_and_the_checkpoint_holds_only_it(tuned):
    path, model = tuned
    assert type(model) is PromptTuneLM
    base = zoo.load_pretrained("lm-pydoc").model.state_dict()
    own = model.model.base_model.state_dict()
    assert own.keys() == base.keys() and all(torch.equal(own[k], base[k]) for k in base), "base bit-identical"
    assert model.parameter_counts()["params/trainable"] == 2 * 64
    rows = model.model.prompt.embedding.weight.detach()
    vocabulary = base["model.embed_tokens.weight"]
    assert not any(torch.equal(row, e) for row in rows for e in vocabulary), "the vocab-initialised rows moved"

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert list(checkpoint["state_dict"]) == ["model.prompt.embedding.weight"]
    assert torch.equal(checkpoint["state_dict"]["model.prompt.embedding.weight"], rows)
    h = checkpoint["hyper_parameters"]
    assert h["base"] == "lm-pydoc" and h["base_sha256"] == pretrained_info("lm-pydoc")["sha256"]
    rebuilt = build_from_checkpoint(verify_checkpoint(path))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    x = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        assert rebuilt(x).shape == (2, 9, 259)


def test_perplexity_is_exp_of_the_token_mean_loss(tuned):
    model = tuned[1].eval()
    dm = TextDataModule(corpus="stdlib_docstrings", block_size=16, batch_size=50)
    dm.setup("test")
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", limit_test_batches=3)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    batch = dm.test_set.__getitems__(list(range(150)))
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(batch["inputs"]).flatten(0, 1), batch["labels"].flatten())
    assert result["test/loss"] == pytest.approx(float(nll), rel=1e-5)
    assert result["test/ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_a_checkpoint_for_another_base_ends_in_one_line(tuned, tmp_path, capsys):
    checkpoint = torch.load(tuned[0], map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["base_sha256"] = "0" * 64
    other = tmp_path / "other-base.ckpt"
    torch.save(checkpoint, other)
    message = "this prompt was tuned on base 'lm-pydoc' with sha256 0000000000000000..., but 'lm-pydoc' now has sha256"
    with pytest.raises(CheckpointError, match=message):
        build_from_checkpoint(verify_checkpoint(other))
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", CONFIG, "--ckpt_path", str(other), f"--trainer.default_root_dir={tmp_path}",
              "--trainer.limit_test_batches=1", *QUIET, *TINY])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("extra, message", [
    (["--model.num_virtual_tokens=0"], "num_virtual_tokens must be a positive integer, got 0"),
    (["--model.prompt_init=text"], "prompt_init 'text' needs a non-empty prompt_init_text, got None"),
    (["--model.prompt_init=text", "--model.prompt_init_text=abc"],
     "init text has 3 tokens, more than num_virtual_tokens=2"),
    (["--model.prompt_init=sample"], "prompt_init must be one of random, text, vocab, got 'sample'"),
    (["--model.base=no-such-lm"], "prompt-tuning base 'no-such-lm' is neither a registered name"),
    (["--model.base=digits-cnn"], "holds a ImageClassifier; expected a module whose .model is the zoo's CausalLM"),
])
def test_bad_input_ends_in_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}",
              *QUIET, *TINY, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0]
