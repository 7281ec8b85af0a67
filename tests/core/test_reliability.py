"""Nothing lost, nothing silently wrong (issue 22): atomic checkpoint writes on any filesystem, a
``last.ckpt`` that is the last state, non-finite training stopped and never saved as best,
``--ckpt_path last`` verified like any path, SIGTERM saving a resumable checkpoint, and one-line
errors where tracebacks were."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import DIGITS, ROOT, quick, run_cli, run_zoo
from tests.core.test_resume import STEPS, _assert_same_training_state
from zoo.core.checkpoint import AtomicCheckpointIO
from zoo.core.cli import main
from zoo.core.errors import CheckpointError
from zoo.core.registry import verify_checkpoint


def _callback(tmp_path, callback: str, **init_args) -> str:
    path = tmp_path / f"{callback}.yaml"
    args = "".join(f"        {k}: {v}\n" for k, v in init_args.items())
    path.write_text(f"trainer:\n  callbacks:\n    - class_path: tests.helpers.{callback}\n      init_args:\n{args}")
    return str(path)


def _one_error_line(capsys, args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def _step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


# -- 1. atomic writes --------------------------------------------------------------------------------
def test_kill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path):
    """The run folder on one filesystem, ``$TMPDIR`` on another (a tmpfs): Lightning's writer
    staged there and moved the file, and a kill during that copy left ``last.ckpt`` at 0 bytes."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    staging = Path(shm) / f"zoo-tmp-{os.getpid()}"
    staging.mkdir()
    try:
        kill = _callback(tmp_path, "KillDuringSave", save=6)
        run = tmp_path / "run"
        args = quick(run, "--trainer.max_steps=12", "--checkpoint.monitor=null", "--checkpoint.filename=step-{step}",
                     "--checkpoint.every_n_train_steps=1")
        result = run_zoo("fit", *args, "--config", kill, env={"TMPDIR": str(staging)})
        assert result.returncode == -9, result.stderr[-2000:]
    finally:
        shutil.rmtree(staging)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    for path in (run / "checkpoints").glob("*.ckpt"):  # every file under a checkpoint name is whole
        verify_checkpoint(path)
    assert "last.ckpt" in names and _step(run / "checkpoints" / "last.ckpt") >= 2, names
    resumed = run_zoo("fit", *args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _step(run / "checkpoints" / "last.ckpt") == 12


def test_a_failed_write_leaves_no_partial_file_and_reports_one_line(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "best.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    original = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*best.ckpt: No space left on device"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    monkeypatch.setattr(torch, "save", original)
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]  # no temporary file left behind
    assert torch.equal(verify_checkpoint(target)["state_dict"]["w"], torch.ones(3))  # the old one, whole


def test_a_full_disk_during_fit_is_one_line(tmp_path, monkeypatch, capsys):
    original = torch.save
    calls = [0]

    def fill_up(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_up)
    error = _one_error_line(capsys, ["fit", *quick(tmp_path, "--trainer.max_epochs=3")])
    assert "No space left on device" in error and "cannot write checkpoint" in error
    monkeypatch.setattr(torch, "save", original)
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        verify_checkpoint(path)


# -- 2. last.ckpt is the last state ----------------------------------------------------------------
def test_last_checkpoint_holds_the_end_of_fit_with_a_monitored_top_k(tmp_path):
    """digits: 20 steps per epoch; val/acc stops improving before epoch 4, so Lightning's last.ckpt
    stayed at the last improvement."""
    cli = run_cli("fit", *quick(tmp_path, "--trainer.max_epochs=4"))
    assert _step(tmp_path / "checkpoints" / "last.ckpt") == cli.trainer.global_step == 80
    best = cli.trainer.checkpoint_callback.best_model_path
    assert Path(best).name.startswith("best-") and verify_checkpoint(best)


def test_last_checkpoint_includes_the_steps_after_the_last_interval(tmp_path):
    run_cli("fit", *quick(tmp_path, "--trainer.max_steps=100", "--trainer.max_epochs=10",
                          "--checkpoint.every_n_train_steps=7", "--checkpoint.monitor=null"))
    assert _step(tmp_path / "checkpoints" / "last.ckpt") == 100


# -- 3. non-finite training ----------------------------------------------------------------------------
def test_a_diverging_fit_stops_in_one_line_and_saves_nothing_non_finite(tmp_path, capsys):
    error = _one_error_line(capsys, ["fit", *quick(tmp_path, "--model.lr=1e6", "--trainer.max_epochs=2")])
    assert "training loss is" in error and "at step" in error
    for path in (tmp_path / "checkpoints").glob("*.ckpt") if (tmp_path / "checkpoints").is_dir() else []:
        state = verify_checkpoint(path)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


@pytest.mark.parametrize("deferred", [False, True])
def test_a_non_finite_loss_stops_the_fit_before_any_checkpoint_of_it(tmp_path, deferred):
    """The accelerator path (deferred: the check is read one step later, and before any checkpoint is written),
    forced on the CPU, against the immediate one: both name step 3, and no file holds the NaN weights."""
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.core.checkpoint import FiniteLoss
    from zoo.core.errors import NonFiniteError

    class Diverges(LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def training_step(self, batch, batch_idx):
            loss = (self.w * batch[0]).sum()
            return loss * float("nan") if batch_idx == 2 else loss  # the third step's loss (step 3 after it)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)), batch_size=1)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[FiniteLoss(deferred=deferred), saver])
    with pytest.raises(NonFiniteError, match="training loss is nan at step 3 .epoch 0, batch 2."):
        trainer.fit(Diverges(), data)
    saved = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert saved == ["step=1.ckpt", "step=2.ckpt"]  # step 3's NaN weights never reached a file
    for path in tmp_path.glob("*.ckpt"):
        assert torch.isfinite(torch.load(path, weights_only=True)["state_dict"]["w"]).all()


def test_a_non_finite_monitored_value_never_makes_a_checkpoint_best():
    """Plain ModelCheckpoint saves the first value it sees while it holds fewer than top-k, NaN too."""
    from zoo.core.checkpoint import ZooCheckpoint

    callback = ZooCheckpoint(monitor="val/acc", mode="max", save_top_k=1)
    for value in (float("nan"), float("inf"), float("-inf")):
        assert callback.check_monitor_top_k(None, torch.tensor(value)) is False


def test_register_refuses_a_diverging_run(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "registry"
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(folder))
    error = _one_error_line(capsys, ["register", "digits-nan", *quick(tmp_path / "run", "--model.lr=1e6")])
    assert "training loss is" in error
    assert not (folder / "manifest.json").exists()


def test_register_validates_the_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "registry"))
    for bad in ("../escape", "a/b", "Upper", ""):
        error = _one_error_line(capsys, ["register", bad, *quick(tmp_path / "run", "--trainer.max_steps=1")])
        assert "registry name" in error and repr(bad) in error
    assert not (tmp_path / "escape-").exists() and not list(tmp_path.glob("escape*"))


# -- 4. --ckpt_path last is verified -----------------------------------------------------------------
@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_evaluating_last_without_a_checkpoint_fails(subcommand, tmp_path, capsys):
    error = _one_error_line(capsys, [subcommand, *quick(tmp_path), "--ckpt_path=last"])
    assert "there is no" in error and "last.ckpt" in error


def test_a_damaged_last_checkpoint_is_named_and_a_good_one_offered(tmp_path, capsys):
    run_cli("fit", *quick(tmp_path, *STEPS, "--checkpoint.every_n_train_steps=10"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    error = _one_error_line(capsys, ["fit", *quick(tmp_path, *STEPS), "--ckpt_path=last"])
    assert "last.ckpt" in error and "newest good one is" in error and "step-step=40.ckpt" in error
    last.write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")  # a malicious pickle, not a zip
    error = _one_error_line(capsys, ["test", *quick(tmp_path, *STEPS), "--ckpt_path=last"])
    assert "not a PyTorch checkpoint" in error


def test_a_checkpoint_of_another_class_is_refused(tmp_path, capsys):
    forecaster = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())["etth1-ndlinear-h24"]["file"]
    error = _one_error_line(capsys, ["test", *quick(tmp_path), f"--ckpt_path=checkpoints/{forecaster}"])
    assert "holds a Forecaster, but the config asks for ImageClassifier" in error


# -- 5. SIGTERM --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, status, message", [
    ("SIGTERM", 143, "stopped by SIGTERM"),
    # the same path (Lightning's on_exception); slow only to keep the default suite under 10 minutes
    pytest.param("SIGINT", 1, "KeyboardInterrupt: saved the state at step 13", marks=pytest.mark.slow),
])
def test_a_stop_signal_saves_a_resumable_checkpoint_and_exits_non_zero(name, status, message, tmp_path):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    run_cli("fit", *quick(reference, *STEPS))
    signal_at = _callback(tmp_path, "SignalAt", step=13, name=name)
    result = run_zoo("fit", *quick(stopped, *STEPS, "--config", signal_at))
    assert result.returncode == status, result.stderr[-2000:]
    assert message in result.stderr + result.stdout
    assert _step(stopped / "checkpoints" / "last.ckpt") == 13
    run_cli("fit", *quick(stopped, *STEPS), "--ckpt_path=last")
    _assert_same_training_state(reference / "checkpoints" / "last.ckpt", stopped / "checkpoints" / "last.ckpt")


# -- 6./7. one line where a traceback was ----------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--model.lr", "-0.01"], "model.lr must be a finite number > 0, got -0.01"),
    (["--model.lr", "0"], "model.lr must be a finite number > 0, got 0"),
    (["--trainer.default_root_dir", "/proc/x"], "trainer.default_root_dir '/proc/x' cannot be created"),
    (["--model.class_path", "Foo"], "model: unknown class 'Foo'; available: "),
])
def test_bad_values_are_one_line(extra, message, tmp_path, capsys):
    error = _one_error_line(capsys, ["fit", "--config", DIGITS, f"--trainer.default_root_dir={tmp_path}", *extra])
    assert message in error and "NestedArg" not in error


def test_an_empty_config_file_is_named(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    error = _one_error_line(capsys, ["fit", "--config", str(empty)])
    assert str(empty) in error and "empty" in error
