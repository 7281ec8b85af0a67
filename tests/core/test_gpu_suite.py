"""benchmarks/gpu_suite.py on the CPU: its quick mode runs, reports every part, and a failing part
does not stop the others (the GPU numbers themselves need a GPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_parts_report_tables_and_one_json_line(suite, capsys):
    result = suite.main(["--device", "cpu", "--quick", "--parts", "peak,dit,dit_compiled,sampling,mfu"])
    out = capsys.readouterr().out
    parts = result["parts"]
    assert [parts[p]["status"] for p in ("peak", "dit", "sampling", "mfu")] == ["ok"] * 4
    assert parts["dit_compiled"]["status"] == "skipped" and "CPU" in parts["dit_compiled"]["reason"]
    assert parts["peak"]["bf16_matmul_tflops"] > 0 and parts["dit"]["rows"][0]["train_ms_zoo"] > 0
    assert 0 < parts["mfu"]["mfu_eager"] < 1
    assert "| DiT-tiny/2 |" in out and "skipped: torch.compile on the CPU" in out
    last = out.strip().splitlines()[-1]
    assert json.loads(last)["benchmark"] == "gpu_suite"


def test_a_failing_part_is_reported_and_the_rest_run(suite, capsys, monkeypatch):
    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(suite.Suite, "part_peak", broken)
    result = suite.main(["--device", "cpu", "--quick", "--parts", "peak,mfu,sampling"])
    parts = result["parts"]
    assert parts["peak"]["status"] == "failed" and "boom" in parts["peak"]["error"]
    assert parts["mfu"]["status"] == "skipped" and "peak" in parts["mfu"]["reason"]
    assert parts["sampling"]["status"] == "ok"
    assert "FAILED: RuntimeError: boom" in capsys.readouterr().out


def test_budget_and_bad_arguments(suite, capsys):
    result = suite.main(["--device", "cpu", "--quick", "--parts", "peak", "--budget", "0"])
    assert result["parts"]["peak"]["status"] == "skipped" and "budget" in result["parts"]["peak"]["reason"]
    with pytest.raises(SystemExit, match="unknown parts"):
        suite.main(["--device", "cpu", "--parts", "peak,warp"])


def test_stage_site_copies_the_cli_dependencies(suite, tmp_path, capsys):
    suite.main(["--stage-site", str(tmp_path / "site")])
    for name in suite.CLI_PACKAGES:
        assert (tmp_path / "site" / name / "__init__.py").is_file()


@pytest.mark.slow
def test_the_whole_quick_cpu_run_in_a_fresh_process():
    """All parts, the CLI fit with the bf16 fragment included (the CUDA fragments are skipped)."""
    done = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--device", "cpu", "--quick", "--threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    statuses = {name: part["status"] for name, part in line["parts"].items()}
    assert "failed" not in statuses.values(), statuses
    assert line["parts"]["cli"]["fragments"]["bf16"]["status"] == "ok"
    assert line["parts"]["zoo_fit"]["step_ms"]["zoo"] > 0
    assert line["total_s"] < 120
