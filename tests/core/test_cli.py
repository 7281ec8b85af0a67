"""The command line through the real CLI: help, every config, fragments, loggers, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning
import pytest
import torch
import yaml

import zoo
from tests.conftest import DIGITS, ROOT, quick, run_cli, run_zoo
from zoo.core.cli import main
from zoo.core.lightning_cli import summarize_parser_error
from zoo.core.registry import model_classes

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
FRAGMENT_DIRS = ("configs/trainer/", "configs/logger/")
EXPERIMENTS = [c for c in CONFIGS if not c.startswith(FRAGMENT_DIRS)]
FRAGMENTS = [c for c in CONFIGS if c.startswith(FRAGMENT_DIRS)]


def test_configs_are_found():
    assert DIGITS in EXPERIMENTS
    names = {Path(c).stem for c in FRAGMENTS}
    assert {"cpu", "ddp_cpu", "bf16", "gpu", "ddp_gpu", "fsdp_gpu", "csv", "tensorboard", "wandb"} <= names


def test_help_in_a_fresh_process():
    top = run_zoo("--help")
    assert top.returncode == 0 and "fit" in top.stdout and "predict" in top.stdout
    fit = run_zoo("fit", "--help")
    assert fit.returncode == 0 and "--trainer.max_epochs" in fit.stdout and "--checkpoint.monitor" in fit.stdout
    bare = run_zoo()
    assert bare.returncode == 0 and "usage" in bare.stdout.lower()


def _print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("# lightning.pytorch==")
    return yaml.safe_load(out)


@pytest.mark.parametrize("config", EXPERIMENTS)
def test_print_config_of_every_experiment(config, capsys):
    printed = _print_config(capsys, "--config", config)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]
    assert printed["trainer"]["default_root_dir"].startswith("runs/")


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_print_config_of_every_fragment_composed(fragment, capsys):
    printed = _print_config(capsys, "--config", DIGITS, "--config", fragment)
    expected = yaml.safe_load(Path(fragment).read_text())["trainer"]
    for key, value in expected.items():
        if isinstance(value, dict):
            assert printed["trainer"][key]["class_path"] == value["class_path"]
        else:
            assert printed["trainer"][key] == value


def test_ddp_and_wandb_fragments_compose_in_order(capsys):
    printed = _print_config(capsys, "--config", DIGITS, "--config", "configs/trainer/ddp_cpu.yaml",
                            "--config", "configs/logger/wandb.yaml")
    assert printed["trainer"]["devices"] == 2
    assert printed["trainer"]["strategy"]["init_args"]["process_group_backend"] == "gloo"
    assert printed["trainer"]["logger"]["class_path"].endswith("WandbLogger")
    assert printed["model"]["init_args"]["head"] == "mlp"  # the experiment survives the fragments


def test_fit_writes_logs_config_curves_and_checkpoints(tmp_path):
    cli = run_cli("fit", *quick(tmp_path, "--trainer.max_epochs=2", "--trainer.limit_train_batches=6"))
    assert cli.trainer.current_epoch == 2
    version = tmp_path / "version_0"
    rows = list(csv.DictReader(open(version / "metrics.csv")))
    assert any(r["val/acc"] for r in rows) and any(r["train/loss_epoch"] for r in rows)
    assert any(r["train/loss"] for r in rows)
    saved = yaml.safe_load((version / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "zoo.ndlinear.ImageClassifier"
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())
    assert hparams["params/total"] == sum(p.numel() for p in cli.model.parameters()) == 53098
    assert (version / "curves.png").stat().st_size > 10_000
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} >= {"last.ckpt"}
    # a second run in the same folder neither fails on the saved config nor overwrites the first run
    run_cli("fit", *quick(tmp_path, "--trainer.max_steps=2"))
    assert (tmp_path / "version_1" / "config.yaml").is_file() and (version / "config.yaml").is_file()


def test_train_loss_is_logged_every_n_steps_as_a_window_mean(tmp_path):
    run_cli("fit", *quick(tmp_path, "--trainer.max_epochs=1", "--trainer.log_every_n_steps=5"))
    rows = list(csv.DictReader(open(tmp_path / "version_0" / "metrics.csv")))
    steps = [int(r["step"]) for r in rows if r["train/loss"]]
    assert steps == [4, 9, 14, 19]  # 20 batches per epoch, one row per 5 steps


@pytest.mark.parametrize("logger, produced", [
    ("tensorboard", "version_0/events.out.tfevents.*"),
    ("wandb", "wandb/offline-run-*"),
    ("csv", "version_0/metrics.csv"),
])
def test_logger_fragments_write_their_files_offline(tmp_path, logger, produced, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_cli("fit", *quick(tmp_path, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
                          "--config", f"configs/logger/{logger}.yaml"))
    assert list(tmp_path.glob(produced)), sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


def test_fast_dev_run_under_bf16_mixed(tmp_path):
    cli = run_cli("fit", *quick(tmp_path, "--config", "configs/trainer/bf16.yaml", "--trainer.fast_dev_run=2"))
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.trainer.global_step == 2 and cli.trainer.callback_metrics["train/loss"].isfinite()


def test_validate_subcommand(tmp_path):
    cli = run_cli("validate", *quick(tmp_path))
    assert 0.0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1.0


def test_progress_bar_can_be_turned_off_and_on(tmp_path):
    from zoo.core.callbacks import ProgressBar

    off = run_cli("fit", *quick(tmp_path, "--trainer.fast_dev_run=1"))
    assert not any(isinstance(c, ProgressBar) for c in off.trainer.callbacks)
    on = run_cli("fit", "--config", DIGITS, f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=1")
    assert any(isinstance(c, ProgressBar) for c in on.trainer.callbacks)


def test_checkpointing_can_be_disabled(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    cli = run_cli("fit", *quick(tmp_path, "--trainer.max_steps=2", "--trainer.enable_checkpointing=false"))
    assert not any(isinstance(c, ModelCheckpoint) for c in cli.trainer.callbacks)
    assert not (tmp_path / "checkpoints").exists()


def test_model_flags_on_the_command_line_win_over_the_checkpoint_hyperparameters(tmp_path):
    """``test --ckpt_path`` rebuilds the model from the checkpoint's hyperparameters (over the config
    file's), but an explicit ``--model.<name>`` flag still applies (e.g. a sampling setting)."""
    run_cli("fit", *quick(tmp_path, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                          "--trainer.limit_val_batches=1", "--model.dropout=0.2"))
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")
    test = ["--ckpt_path", ckpt, "--trainer.limit_test_batches=1"]
    assert run_cli("test", *quick(tmp_path, *test)).model.hparams.dropout == 0.2  # the config file says 0.1
    assert run_cli("test", *quick(tmp_path, *test, "--model.dropout", "0.4")).model.hparams.dropout == 0.4
    assert run_cli("test", *quick(tmp_path, *test, "--model.init_args.dropout=0.5")).model.hparams.dropout == 0.5


# -- errors: one line, naming the bad value, exit status 2 ---------------------------------------
BAD_INPUTS = [
    (["--model", "ImageClassifierX"],
     # every model class the registry knows, sorted (the paper packages' LightningModules)
     "model: unknown class 'ImageClassifierX'; available: " + ", ".join(sorted(model_classes()))),
    (["--data", "Foo"], "data: unknown class 'Foo'; available: AntibodySequenceDataModule, CIFARDataModule, "),
    (["--model.head", "foo"], "model: ImageClassifier head must be one of ('linear', 'mlp', 'ndlinear'), got 'foo'"),
    (["--model.init_args.foo", "3"], "Option 'foo' is not accepted"),
    (["--model.lr", "abc"], "Expected a <class 'float'>. Got value: abc"),
    (["--trainer.max_epochs", "x"], "trainer.max_epochs: Expected a <class 'int'> (given: x)"),
    (["--trainer.max_epochs", "-5"], "`max_epochs` must be a non-negative integer or -1. You passed in -5."),
    (["--data.batch_size", "-1"], "data: batch_size must be >= 1, got -1"),
    (["--data", "MNISTDataModule", "--data.data_dir", "/nonexistent"], "MNISTDataModule: no train-images-idx3-ubyte"),
    (["--model.image_size", "28", "--trainer.fast_dev_run", "1"],
     "ImageClassifier: images must have shape [*, 1, 28, 28], got [64, 1, 8, 8]"),
    (["--ckpt_path", "missing.ckpt"], "checkpoint 'missing.ckpt' does not exist"),
    (["--config", "nonexistent.yaml"], "config: File does not exist"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[" ".join(e) for e, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_problem(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DIGITS, f"--trainer.default_root_dir={tmp_path}", *extra])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], lines
    assert "Traceback" not in lines[0]


def test_bad_input_in_a_fresh_process_prints_only_the_error():
    result = run_zoo("fit", "--config", DIGITS, "--model", "Nope")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: model: unknown class 'Nope'")
    assert "Traceback" not in result.stderr


def test_summarize_keeps_unknown_reports_readable():
    message = 'Parser key "x":\n  Some new jsonargparse problem\n  Given value: 3'
    assert summarize_parser_error(message) == "x: Some new jsonargparse problem (given: 3)"


@pytest.mark.parametrize("config", EXPERIMENTS)
def test_fast_dev_run_of_every_experiment(config, tmp_path):
    """Every experiment config trains a step, validates and tests; file-based data is written here
    in its real format."""
    from tests.data_modules.test_data_modules import write_cifar, write_ett, write_mnist

    data = yaml.safe_load(Path(config).read_text())["data"]["class_path"]
    extra = []
    if data == "MNISTDataModule":  # batches of 4: the DiT-S configs are sized for real runs
        write_mnist(tmp_path / "data")
        extra = [f"--data.data_dir={tmp_path / 'data'}", "--data.batch_size=4"]
    elif data == "CIFARDataModule":
        write_cifar(tmp_path / "data", 10)
        extra = [f"--data.data_dir={tmp_path / 'data'}", "--data.batch_size=4"]
    elif data == "TimeSeriesDataModule":  # an ETT-shaped file: date + 7 columns, 14,400 rows
        (tmp_path / "data").mkdir()
        write_ett(tmp_path / "data" / "ETTh1.csv", rows=14400, columns=7)
        extra = [f"--data.data_dir={tmp_path / 'data'}"]
    elif data == "AntibodySequenceDataModule":  # real OAS columns, 40 written heavy chains
        from tests.alignab.test_antibody_data import antibody_rows, write_csv

        (tmp_path / "data").mkdir()
        write_csv(tmp_path / "data" / "oas_human_heavy_2k.csv", antibody_rows(40))
        extra = [f"--data.data_dir={tmp_path / 'data'}"]
    model = yaml.safe_load(Path(config).read_text())["model"]
    autoencoder = model["init_args"].get("autoencoder")
    if autoencoder and autoencoder not in zoo.list_pretrained():  # an untrained one of the config it names
        from zoo.dit import ImageAutoencoder

        ae_config = yaml.safe_load(Path("configs/dit/mnist_autoencoder.yaml").read_text())["model"]["init_args"]
        ae = ImageAutoencoder(**ae_config)
        torch.save({"state_dict": ae.state_dict(), "hyper_parameters": dict(ae.hparams),
                    "pytorch-lightning_version": lightning.__version__}, tmp_path / "ae.ckpt")
        extra.append(f"--model.autoencoder={tmp_path / 'ae.ckpt'}")
    cli = run_cli("fit", "--config", config, f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=1",
                  "--trainer.enable_progress_bar=false", *extra)
    assert cli.trainer.global_step == 1
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert results and all(torch.isfinite(torch.tensor(v)) for v in results[0].values())


def test_seeds_command_reports_mean_and_spread(tmp_path, capsys):
    main(["seeds", "--seeds", "0", "1", "--", *quick(tmp_path, "--trainer.max_epochs=1", "--trainer.limit_train_batches=4")])
    summary = json.loads((tmp_path / "seeds.json").read_text())
    accuracies = [run["test/acc"] for run in summary["runs"]]
    assert summary["seeds"] == [0, 1] and len(accuracies) == 2 and accuracies[0] != accuracies[1]
    assert summary["mean"]["test/acc"] == pytest.approx(sum(accuracies) / 2)
    assert summary["std"]["test/acc"] > 0 and summary["params"] == 53098
    assert (tmp_path / "seed0" / "checkpoints").is_dir() and (tmp_path / "seed1" / "checkpoints").is_dir()
    assert "test/acc" in capsys.readouterr().out
