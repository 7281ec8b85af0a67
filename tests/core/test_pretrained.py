"""The registry: manifest, sha256, weights_only loading, the CLI on shipped files, rebuilding."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import zoo
from tests.conftest import DIGITS, ROOT, quick, run_cli
from zoo.core.cli import main
from zoo.core.errors import CheckpointError, UnknownPretrainedError
from zoo.core.register import register
from zoo.core.registry import model_class, model_classes, read_manifest, sha256, verify_checkpoint
from zoo.ndlinear import ImageClassifier

MANIFEST = read_manifest(ROOT / "checkpoints")


def test_manifest_entries_are_complete_and_files_match():
    assert "digits-cnn" in zoo.list_pretrained()
    for name, entry in MANIFEST.items():
        path = ROOT / "checkpoints" / entry["file"]
        assert path.is_file() and sha256(path) == entry["sha256"], name
        assert entry["file"].startswith(name) and entry["sha256"][:8] in entry["file"]
        assert path.stat().st_size < 5 * 2**20, "checkpoints stay a few MB"
        assert entry["command"].startswith(f"python -m zoo register {name} --config configs/")
        assert entry["metrics"] and entry["class"] in model_classes()


def test_load_pretrained_returns_the_model_in_eval_mode():
    model = zoo.load_pretrained("digits-cnn")
    assert isinstance(model, ImageClassifier) and not model.training
    assert model.hparams.head == "mlp"
    from data_modules import DigitsDataModule

    data = DigitsDataModule()
    data.setup("test")
    images, labels = data.test_set.tensors
    with torch.no_grad():
        accuracy = (model(images).argmax(-1) == labels).float().mean().item()
    assert accuracy == pytest.approx(MANIFEST["digits-cnn"]["metrics"]["test/acc"], abs=1e-4)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnknownPretrainedError, match="unknown pretrained name 'nope'; available: ") as info:
        zoo.load_pretrained("nope")
    assert str(info.value).endswith(", ".join(sorted(zoo.list_pretrained())))


@pytest.fixture
def registry_copy(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    shutil.copytree(ROOT / "checkpoints", folder)
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(folder))
    return folder


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_checkpoint_is_refused(registry_copy):
    _flip_a_byte(registry_copy / MANIFEST["digits-cnn"]["file"])
    with pytest.raises(CheckpointError, match="does not match the manifest's .*corrupt or was modified"):
        zoo.load_pretrained("digits-cnn")


def test_missing_checkpoint_file_is_reported(registry_copy):
    (registry_copy / MANIFEST["digits-cnn"]["file"]).unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        zoo.load_pretrained("digits-cnn")


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely \\(weights_only=True\\)"):
        verify_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "a.ckpt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a zip archive"):
        verify_checkpoint(tmp_path / "a.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match="no 'state_dict' entry"):
        verify_checkpoint(tmp_path / "b.ckpt")


def test_cli_refuses_a_tampered_registered_checkpoint(registry_copy, tmp_path, capsys):
    path = registry_copy / MANIFEST["digits-cnn"]["file"]
    _flip_a_byte(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", DIGITS, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={path}"])
    assert exit_info.value.code == 2
    assert "does not match the manifest's" in capsys.readouterr().err


def test_cli_test_and_predict_with_the_shipped_file(tmp_path):
    ckpt = f"checkpoints/{MANIFEST['digits-cnn']['file']}"
    cli = run_cli("test", *quick(tmp_path), f"--ckpt_path={ckpt}")
    assert float(cli.trainer.callback_metrics["test/acc"]) == pytest.approx(
        MANIFEST["digits-cnn"]["metrics"]["test/acc"], abs=1e-4)
    run_cli("predict", *quick(tmp_path), f"--ckpt_path={ckpt}")
    rows = (tmp_path / "version_1" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "predicted,probability,label" and len(rows) == 360
    assert (tmp_path / "version_1" / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    correct = sum(r.split(",")[0] == r.split(",")[2] for r in rows[1:])
    assert correct / 359 == pytest.approx(MANIFEST["digits-cnn"]["metrics"]["test/acc"], abs=1e-4)


def test_register_trains_strips_and_records(tmp_path):
    folder = tmp_path / "registry"
    entry = register("tiny", quick(tmp_path / "run", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3"),
                     folder=folder)
    path = folder / entry["file"]
    assert path.is_file() and sha256(path) == entry["sha256"] and entry["file"] == f"tiny-{entry['sha256'][:8]}.ckpt"
    stripped = torch.load(path, weights_only=True)
    assert set(stripped) <= {"state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version"}
    assert "optimizer_states" not in stripped
    assert 0 <= entry["metrics"]["test/acc"] <= 1 and entry["configs"] == [DIGITS]
    assert json.loads((folder / "manifest.json").read_text())["tiny"]["sha256"] == entry["sha256"]


def test_every_shipped_checkpoint_loads_with_its_class():
    for name, entry in MANIFEST.items():
        model = zoo.load_pretrained(name)
        assert type(model) is model_class(entry["class"])
        assert sum(p.numel() for p in model.parameters()) == entry["params"] and not model.training
