"""Fault tolerance: a crashed run resumed with ``--ckpt_path last`` ends bit-identical to an
uninterrupted run of the same seed (weights, optimizer state, step count).

The digits model has dropout, so this also checks that RNG states travel in the checkpoint,
and it crashes mid-epoch, so the training order must resume at the right batch.
"""

from __future__ import annotations

import torch

from tests.conftest import quick, run_cli, run_zoo

STEPS = ["--trainer.max_epochs=2", "--checkpoint.monitor=null", "--checkpoint.filename=step-{step}"]


def _fragment(tmp_path, callback: str, step: int) -> str:
    path = tmp_path / f"{callback}.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n"
        f"    - class_path: tests.helpers.{callback}\n      init_args:\n        step: {step}\n"
    )
    return str(path)


def _assert_same_training_state(a_path, b_path) -> None:
    a = torch.load(a_path, map_location="cpu", weights_only=True)
    b = torch.load(b_path, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 40
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for (_, sa), (_, sb) in zip(sorted(a["optimizer_states"][0]["state"].items()),
                                sorted(b["optimizer_states"][0]["state"].items())):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def test_killed_mid_epoch_resumes_exactly(tmp_path):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    run_cli("fit", *quick(reference, *STEPS, "--checkpoint.every_n_train_steps=5"))

    kill = _fragment(tmp_path, "KillAt", 13)  # SIGKILL after step 13: last checkpoint is step 10, mid-epoch 0
    result = run_zoo("fit", *quick(crashed, *STEPS, "--checkpoint.every_n_train_steps=5", "--config", kill))
    assert result.returncode != 0, result.stderr[-2000:]
    saved = torch.load(crashed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 10

    run_cli("fit", *quick(crashed, *STEPS, "--checkpoint.every_n_train_steps=5"), "--ckpt_path=last")
    _assert_same_training_state(reference / "checkpoints" / "last.ckpt", crashed / "checkpoints" / "last.ckpt")


def test_crash_after_epoch_end_checkpoint_resumes_exactly(tmp_path):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    run_cli("fit", *quick(reference, *STEPS, "--checkpoint.every_n_train_steps=10"))

    raise_at = _fragment(tmp_path, "RaiseAt", 23)  # last checkpoint: step 20 = the end of epoch 0
    try:
        run_cli("fit", *quick(crashed, *STEPS, "--checkpoint.every_n_train_steps=10", "--config", raise_at))
    except RuntimeError as err:
        assert "simulated crash" in str(err)
    saved = torch.load(crashed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 20

    run_cli("fit", *quick(crashed, *STEPS, "--checkpoint.every_n_train_steps=10"), "--ckpt_path=last")
    _assert_same_training_state(reference / "checkpoints" / "last.ckpt", crashed / "checkpoints" / "last.ckpt")


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    cli = run_cli("fit", *quick(tmp_path, "--trainer.max_steps=3"), "--ckpt_path=last")
    assert cli.trainer.global_step == 3
