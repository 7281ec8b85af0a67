"""PromptTuneOneLayer through the CLI (configs/prompt_tuning/universality.yaml, memorization.yaml):
a few-step fit reproduces ``limits.fit`` of the benchmark script, only the prompt gets gradients, the
logged errors equal ``limits.relative_error`` / ``worst_pair_error`` on the script's data, the
checkpoint holds the prompt and c only and round-trips with weights_only, bad input ends in one line."""

from __future__ import annotations

import sys

import pytest
import torch

from data_modules.seq2seq import Seq2SeqDataModule, lipschitz_inputs, lipschitz_map, memorization_pairs
from tests.conftest import ROOT, run_cli
from zoo.core.cli import main
from zoo.core.errors import ShapeError
from zoo.core.registry import build_from_checkpoint, verify_checkpoint
from zoo.prompt_tuning import PromptTuneOneLayer
from zoo.prompt_tuning.limits import OneLayerTransformer, PromptedTransformer, fit, relative_error, worst_pair_error

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {"universality": "configs/prompt_tuning/universality.yaml",
           "memorization": "configs/prompt_tuning/memorization.yaml"}
STEPS = 5
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.log_every_n_steps=1", f"--trainer.max_steps={STEPS}", f"--trainer.val_check_interval={STEPS}",
         "--model.num_virtual_tokens=3"]


def script_data(experiment: str) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_eval, y_eval)`` built as benchmarks/prompt_tuning/limits.py builds them
    (seed 0, d = 2, L = 2; memorization: N = 4, evaluated on its pairs)."""
    model = OneLayerTransformer(2, 16, seed=0)
    with torch.no_grad():
        if experiment == "universality":
            f = lipschitz_map(2, 2, seed=0)
            x_train, x_test = lipschitz_inputs((128, 256), 2, 2, 0)
            offset = model(x_train).mean(0) - f(x_train).mean(0)
            return x_train, f(x_train) + offset, x_test, f(x_test) + offset
        x, noise = memorization_pairs(4, 2, 2, 0)
        y = model(x).mean(0) + noise
        return x, y, x, y


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def fitted(request, tmp_path_factory):
    """A 3-token prompt fit ``STEPS`` full-batch steps through the CLI: ``(experiment, root, cli)``."""
    root = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as patch:  # as the function-scoped _repo_root fixture does
        patch.chdir(ROOT)
        patch.setattr(sys, "argv", ["zoo"])
        cli = run_cli("fit", "--config", CONFIGS[request.param], f"--trainer.default_root_dir={root}", *QUIET)
    assert cli.trainer.global_step == STEPS
    return request.param, root, cli


def test_the_fit_reproduces_the_scripts_fit(fitted):
    experiment, _, cli = fitted
    x_train, y_train, _, _ = script_data(experiment)
    block = OneLayerTransformer(2, 16, seed=0)
    torch.manual_seed(0)  # the script's prompt init, drawn after the block
    script = PromptedTransformer(block, 3)
    fit(script, x_train, y_train, steps=STEPS, lr=0.1)
    torch.testing.assert_close(cli.model.model.prompt.embedding.weight.detach(), script.prompt.embedding.weight.detach(),
                               rtol=1e-4, atol=1e-5)


def test_only_the_prompt_gets_gradients(fitted):
    model = fitted[2].model
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.prompt.embedding.weight"]
    fresh = OneLayerTransformer(2, 16, seed=0).state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in model.model.model.state_dict().items()), "block unchanged"
    x, y, _, _ = script_data(fitted[0])
    model.zero_grad()
    (model(x) - y).pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads.pop("model.prompt.embedding.weight").abs().sum() > 0
    assert all(g is None for g in grads.values())
    assert model.parameter_counts()["params/trainable"] == 3 * 2


def test_logged_errors_equal_the_scripts_measures(fitted):
    experiment, _, cli = fitted
    logged = cli.trainer.callback_metrics
    x_train, y_train, x_eval, y_eval = script_data(experiment)
    tuned = cli.model.model.eval()
    with torch.no_grad():
        pred_eval, pred_train = tuned(x_eval), tuned(x_train)
    assert float(logged["val/relative_error"]) == pytest.approx(relative_error(pred_eval, y_eval), rel=1e-5)
    assert float(logged["val/worst_pair_error"]) == pytest.approx(worst_pair_error(pred_eval, y_eval), rel=1e-5)
    assert float(logged["val/mse"]) == pytest.approx(float((pred_eval - y_eval).pow(2).mean()), rel=1e-5)
    if experiment == "universality":
        assert float(logged["val/train_relative_error"]) == pytest.approx(relative_error(pred_train, y_train), rel=1e-5)
    else:
        assert "val/train_relative_error" not in logged  # the pairs are the validation set


def test_checkpoint_holds_the_prompt_and_c_and_round_trips(fitted):
    _, root, cli = fitted
    path = root / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert sorted(checkpoint["state_dict"]) == ["model.prompt.embedding.weight", "offset", "offset_length"]
    assert int(checkpoint["state_dict"]["offset_length"]) == 2
    x = torch.rand(5, 2, 2)
    for loaded in (PromptTuneOneLayer.load_from_checkpoint(path, map_location="cpu", weights_only=True),
                   build_from_checkpoint(verify_checkpoint(path))):
        assert all(torch.equal(v, cli.model.state_dict()[k]) for k, v in loaded.state_dict().items())
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), cli.model.eval()(x))


def test_test_reads_c_from_the_checkpoint(fitted, tmp_path):
    experiment, root, cli = fitted
    result = run_cli("test", "--config", CONFIGS[experiment], f"--trainer.default_root_dir={tmp_path}", *QUIET,
                     "--ckpt_path", str(root / "checkpoints" / "last.ckpt"))
    assert torch.equal(result.model.offset, cli.model.offset)
    assert "test/relative_error" in result.trainer.callback_metrics


def test_data_module_draws_the_scripts_data():
    dm = Seq2SeqDataModule(task="lipschitz")
    dm.setup("fit")
    x_train, y_train, x_eval, y_eval = script_data("universality")
    assert torch.equal(dm.train_set.tensors[0], x_train) and torch.equal(dm.val_set.tensors[0], x_eval)
    shift = y_train.mean(0)  # the centred targets plus c are the script's targets
    torch.testing.assert_close(dm.val_set.tensors[1] + shift, y_eval, rtol=0, atol=1e-6)
    assert dm.test_set.tensors[0].shape == (256, 2, 2) and not torch.equal(dm.test_set.tensors[0], x_eval)


def test_inputs_of_the_wrong_width_end_in_a_shape_error():
    model = PromptTuneOneLayer(num_virtual_tokens=2, dim=2)
    with pytest.raises(ShapeError, match=r"x must have shape \[\*, \*, 2\], got \[4, 2, 3\] \(the model's dim=2"):
        model(torch.rand(4, 2, 3))
    with pytest.raises(ShapeError, match="soft prompt width 3 does not match the transformer's width 2"):
        model.model.model(torch.rand(4, 2, 2), torch.zeros(2, 3))


@pytest.mark.parametrize("extra, message", [
    (["--model.num_virtual_tokens=0"], "num_virtual_tokens must be a positive integer, got 0"),
    (["--data.dim=3"], "PromptTuneOneLayer: x must have shape [*, *, 2], got [128, 2, 3] (the model's dim=2"),
    (["--data.length=80"], "sequences of 80 tokens exceed the model's max_len=64"),
    (["--data.task=copy"], "Seq2SeqDataModule task must be one of lipschitz, memorize, got 'copy'"),
    (["--model.attention=linear"], "PromptTuneOneLayer attention must be one of exact, fast, got 'linear'"),
])
def test_bad_input_ends_in_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIGS["universality"], f"--trainer.default_root_dir={tmp_path}", *QUIET, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0]
