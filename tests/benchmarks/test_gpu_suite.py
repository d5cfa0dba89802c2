"""The GPU suite's own logic on a CPU (``benchmarks/gpu_suite.py``, ``make test-gpu``): how it finds the
device (torch.cuda faked, a stand-in ``nvidia-smi`` on the PATH), how it records a step that fails or
runs out of time (real processes), how it reads a real pytest run's junit XML, and the whole runner
on the CPU: every GPU test skipped for "no CUDA", a missing or failing doctor recorded as a failed step."""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import torch

from tests.benchmarks.test_benchmarks import BENCHMARKS, load

ROOT = BENCHMARKS.parent
GPU_TESTS = len(list((ROOT / "tests" / "gpu").glob("test_*.py")))


def test_the_device_is_found_and_described(monkeypatch, tmp_path):
    suite = load("gpu_suite")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert suite.no_cuda_reason() == f"no CUDA: torch {torch.__version__} is a build without CUDA"
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert suite.no_cuda_reason().startswith(f"no CUDA: torch {torch.__version__} (built for CUDA 13.0) finds no GPU")
    assert suite.device_facts() == {"cuda": False, "reason": suite.no_cuda_reason(), "torch": torch.__version__,
                                    "cuda_build": "13.0"}

    # a GPU: torch.cuda answers for one H200, and an nvidia-smi on the PATH reports the driver
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(
        name="NVIDIA H200", total_memory=143771 * 2**20, major=9, minor=0, multi_processor_count=132))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91900)
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = --query-gpu=driver_version ] && echo 580.159.03\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert suite.no_cuda_reason() is None
    facts = suite.device_facts()
    assert facts == {"torch": torch.__version__, "cuda_build": "13.0", "cuda": True, "name": "NVIDIA H200", "count": 1,
                     "memory_gib": 140.4, "capability": "9.0", "multiprocessors": 132, "cudnn": 91900,
                     "driver": "580.159.03"}
    smi.write_text("#!/bin/sh\nexit 9\n")  # a driver that does not answer
    assert suite.nvidia_driver() is None

    name = suite.folder_name(datetime.date(2026, 12, 7), facts["name"])
    assert name == "2026-12-07-nvidia-h200"
    assert suite.new_folder(tmp_path, name).name == name
    assert suite.new_folder(tmp_path, name).name == f"{name}-2"


def test_a_step_that_fails_or_runs_out_of_time_is_recorded_with_its_log(tmp_path):
    suite = load("gpu_suite")
    ok = suite.run_step("ok", [sys.executable, "-c", "print('fine')"], tmp_path / "ok.log", 60)
    assert (ok["status"], ok["rc"], ok["log"]) == ("passed", 0, "ok.log") and "message" not in ok
    bad = suite.run_step("bad", [sys.executable, "-c", "import sys; print('working'); sys.exit('a clear reason')"],
                         tmp_path / "bad.log", 60)
    assert (bad["status"], bad["rc"], bad["message"]) == ("failed", 1, "a clear reason")
    slow = suite.run_step("slow", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"],
                          tmp_path / "slow.log", 1)
    assert slow["status"] == "failed" and slow["message"] == "ran out of its 1 s and was killed"
    assert (tmp_path / "slow.log").read_text() == "started\n"  # what it wrote before it was killed is kept


def test_outcomes_and_facts_are_read_from_a_real_pytest_run(tmp_path):
    suite = load("gpu_suite")
    (tmp_path / "test_sample.py").write_text(textwrap.dedent('''
        import json, pytest

        def test_measures(record_property):
            record_property("facts", json.dumps({"losses": [2.5, 2.25], "host_reads": 1}))

        def test_fails():
            pytest.fail("a failing test the runner must record")

        @pytest.mark.skip(reason="no CUDA: none here")
        def test_skips():
            pass
    '''))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    junit = tmp_path / "junit.xml"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                          "--rootdir", str(tmp_path), "-o", "junit_family=xunit1", f"--junitxml={junit}",
                          str(tmp_path / "test_sample.py")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout
    tests = {t["test"].split("::")[-1]: t for t in suite.read_junit(junit)}
    assert tests["test_measures"]["outcome"] == "passed"
    assert tests["test_measures"]["facts"] == {"losses": [2.5, 2.25], "host_reads": 1}
    assert tests["test_fails"]["outcome"] == "failed" and "a failing test the runner must record" in tests["test_fails"]["message"]
    assert tests["test_skips"] == {**tests["test_skips"], "outcome": "skipped", "message": "no CUDA: none here"}
    assert suite.read_junit(tmp_path / "missing.xml") == []

    # on a GPU a skipped test fails the tests' step; --allow-cpu expects skips
    on_gpu = {"cuda": True, "name": "NVIDIA H200"}
    step = {"name": "tests", "status": "passed", "seconds": 1.0}
    summary = suite.summarise(on_gpu, [dict(step)], list(tests.values()), None, None, 0.0, cpu_allowed=False)
    assert summary["ok"] is False and summary["steps"][0]["message"] == "1 tests skipped on a GPU"
    assert summary["test_counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert suite.summarise(on_gpu, [dict(step)], [], None, None, 0.0, False)["steps"][0]["message"] == \
        "no test ran (no junit XML)"
    assert suite.summarise({"cuda": False}, [dict(step)], [tests["test_skips"]], None, None, 0.0, True)["ok"] is True


def test_the_runner_on_the_cpu(tmp_path):
    """``make test-gpu`` here: every GPU test skips with its reason, nothing is written, exit 0; and
    ``--allow-cpu`` runs the steps and writes the summary, a missing or failing doctor a failed step."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = sorted((ROOT / "benchmarks" / "results").rglob("*"))
    plain = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_suite.py")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    skipped = [line for line in plain.stdout.splitlines() if line.startswith("tests/gpu/") and " SKIPPED" in line]
    assert len(skipped) >= GPU_TESTS
    assert plain.stdout.rstrip().endswith("the measurements need a GPU; nothing written")
    assert sorted((ROOT / "benchmarks" / "results").rglob("*")) == before

    # the tests' step, then the doctor's in a second call into the same folder (the suite split over
    # short slices of GPU time): the second keeps the first's records and files
    out = tmp_path / "results"
    dry = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--allow-cpu", "--steps", "tests",
                          "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"]["cuda"] is False and summary["cpu_allowed"] is True
    assert [s["name"] for s in summary["steps"]] == ["tests"]
    assert summary["steps"][0]["status"] == "passed" and (out / "pytest.log").is_file()
    assert summary["test_counts"]["skipped"] == len(summary["tests"]) == len(skipped)
    assert all(t["message"].startswith("no CUDA: ") for t in summary["tests"])
    assert summary["ok"] is True and dry.returncode == 0
    assert dry.stdout.rstrip().endswith(f"results and logs in {out}")

    again = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--allow-cpu", "--steps", "doctor",
                            "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    merged = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in merged["steps"]] == ["tests", "doctor"]
    assert merged["steps"][0] == summary["steps"][0] and merged["tests"] == summary["tests"]
    assert (out / "pytest.log").is_file() and (out / "junit.xml").is_file()
    doctor = merged["steps"][1]
    if importlib.util.find_spec("cluster.doctor") is None:
        assert doctor["status"] == "failed" and doctor["message"] == "No module named cluster.doctor: nothing to run"
    else:
        assert "--address" in doctor["command"] and (out / "doctor.log").is_file()
        # the doctor writes its report when it reached the cluster: exit 0 without problems, 1 with
        # (here maybe the disk: its free space is this machine's), 2 when it could not run at all
        assert doctor["rc"] in (0, 1, 2)
        assert (merged["doctor"] is not None) == (doctor["rc"] != 2)
        if merged["doctor"] is not None:
            assert (merged["doctor"]["problems"] == []) == (doctor["rc"] == 0)
    assert merged["ok"] == all(s["status"] == "passed" for s in merged["steps"])
    assert again.returncode == (0 if merged["ok"] else 1)
    assert again.stdout.rstrip().endswith(f"results and logs in {out}")
