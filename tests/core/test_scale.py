"""Scale is configuration: DDP over gloo and bf16 run for real on CPUs; GPU and FSDP configs
parse everywhere and run where CUDA is present (``pytest -m gpu``)."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.conftest import DIGITS, quick, run_cli, run_zoo
from zoo.core.cli import main


def test_ddp_cpu_two_processes_with_bf16(tmp_path):
    result = run_zoo("fit", *quick(tmp_path, "--trainer.max_epochs=1", "--config", "configs/trainer/ddp_cpu.yaml",
                                   "--config", "configs/trainer/bf16.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "Starting with 2 processes" in result.stderr + result.stdout
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 10  # 20 batches per epoch shared by 2 ranks
    rows = list(csv.DictReader(open(tmp_path / "version_0" / "metrics.csv")))
    assert any(r["val/acc"] for r in rows)


def test_fsdp_on_a_cpu_machine_fails_in_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DIGITS, "--config", "configs/trainer/fsdp_gpu.yaml",
              f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trainer.accelerator=gpu but this machine has no CUDA GPU" in errors[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fragment", ["gpu", "fp16"])
def test_gpu_fast_dev_run(tmp_path, fragment):
    extra = ["--config", "configs/trainer/gpu.yaml"] + (["--config", "configs/trainer/fp16.yaml"] if fragment == "fp16" else [])
    cli = run_cli("fit", *quick(tmp_path, *extra, "--trainer.fast_dev_run=2"))
    # after fit Lightning moves the model back to the CPU: ask where the strategy trained it
    assert cli.trainer.global_step == 2 and cli.trainer.strategy.root_device.type == "cuda"
