"""The GPU suite in one command: the tests under ``tests/gpu``, the GPU throughput benchmark, and the
cluster doctor against a local Ray, with every result and log in one folder to commit.

    make test-gpu                                           # runs this: python benchmarks/gpu_suite.py
    python benchmarks/gpu_suite.py --out DIR                # another folder
    python benchmarks/gpu_suite.py --allow-cpu --quick --out DIR   # every step on the CPU, small (tests)

On a GPU it writes ``benchmarks/results/gpu/<YYYY-MM-DD>-<gpu>/``:

- ``summary.json``: the device, each step's command, exit status, seconds and log, each test's
  outcome and the facts it recorded (losses, η of every rank, host reads, recompiles, accuracies),
  the benchmark's figures (``throughput``) and the doctor's (``doctor``); ``ok`` is true when every
  step passed;
- ``pytest.log`` and ``junit.xml`` (the tests), ``gpu_throughput.log`` and ``gpu_throughput.json``
  (``benchmarks/gpu_throughput.py``: eager against compiled at 10 / 40 / 160 images a step, MFU,
  whether the data keeps up), ``doctor.log`` and ``doctor.json`` (``python -m cluster.doctor``).

Every step runs even when one before it failed, each under its own time limit (a step that runs out
of time is recorded as failed, its log kept). The exit status is 0 only when every step passed.
``--steps`` runs some of them; into a folder that holds an earlier call's results, the steps not run
again keep their records and files (GPU time in slices: ``--steps tests``, then
``--steps throughput,doctor``, with the same ``--out``).

Where CUDA is absent (``torch.version.cuda`` is None, or torch finds no GPU) the tests still run, so
each says in one line why it skips; the measurements are left out, nothing is written, and the exit
status is pytest's (0). ``--allow-cpu`` runs every step anyway, the benchmark in its ``--quick`` CPU
form: the figures then mean nothing, but every part of this runner runs (its tests do this).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
SUMMARY = "summary.json"
DOCTOR_MODULE = "cluster.doctor"
# per-step time limits (seconds): the whole suite is meant to take ~8 minutes on one GPU
LIMITS = {"tests": 420, "throughput": 360, "doctor": 120}
# what each step writes into the folder (removed before the step runs again)
OUTPUTS = {"tests": ("pytest.log", "junit.xml"), "throughput": ("gpu_throughput.log", "gpu_throughput.json"),
           "doctor": ("doctor.log", "doctor.json")}


# ---------------------------------------------------------------------------------------------- device


def no_cuda_reason() -> str | None:
    """None when torch can use a GPU here; else one line saying why not (the tests' skip reason)."""
    import torch

    if torch.version.cuda is None:
        return f"no CUDA: torch {torch.__version__} is a build without CUDA"
    if not torch.cuda.is_available():
        return (f"no CUDA: torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no GPU "
                f"(no NVIDIA driver, or no device visible)")
    return None


def device_facts() -> dict:
    """What the suite ran on: GPU 0's name, memory, compute capability, the torch/CUDA/cuDNN builds and
    the driver (from ``nvidia-smi``, when it answers). ``{"cuda": False, "reason": ...}`` without CUDA."""
    import torch

    reason = no_cuda_reason()
    facts = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if reason is not None:
        return {"cuda": False, "reason": reason, **facts}
    p = torch.cuda.get_device_properties(0)
    facts.update({"cuda": True, "name": p.name, "count": torch.cuda.device_count(),
                  "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                  "multiprocessors": p.multi_processor_count,
                  "cudnn": torch.backends.cudnn.version(), "driver": nvidia_driver()})
    return facts


def nvidia_driver() -> str | None:
    """The driver version ``nvidia-smi`` reports, or None where it is missing or does not answer."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.split("\n")[0].strip() or None


def folder_name(day: datetime.date, gpu_name: str) -> str:
    """``<YYYY-MM-DD>-<gpu>``, the GPU's name in lower case with every other character a hyphen."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return f"{day.isoformat()}-{slug}"


def new_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``, ... when it exists (a second run on the same day)."""
    folder, n = parent / name, 2
    while folder.exists():
        folder, n = parent / f"{name}-{n}", n + 1
    folder.mkdir(parents=True)
    return folder


# ----------------------------------------------------------------------------------------------- steps


def run_step(name: str, command: list[str], log: Path, limit_s: float) -> dict:
    """Run ``command`` from the repository root, its output to ``log`` and to this terminal, within
    ``limit_s`` seconds (then its process group is killed). Returns the step's record."""
    t0 = time.perf_counter()
    print(f"== {name}: {' '.join(command)}", flush=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        timer = _killer(proc, limit_s)
        for line in proc.stdout:
            out.write(line)
            sys.stdout.write(line)
        rc = proc.wait()
        timed_out = timer.expired
        timer.cancel()
    record = {"name": name, "command": command, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
              "log": log.name, "status": "passed" if rc == 0 and not timed_out else "failed"}
    if timed_out:
        record["message"] = f"ran out of its {limit_s:g} s and was killed"
    elif rc != 0:
        record["message"] = last_line(log) or f"exit status {rc}"
    return record


class _killer:
    """Kills ``proc``'s process group once ``limit_s`` seconds have passed (unless cancelled first)."""

    def __init__(self, proc: subprocess.Popen, limit_s: float):
        import threading

        self.expired = False
        self._proc = proc
        self._timer = threading.Timer(limit_s, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def _kill(self) -> None:
        self.expired = True
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


def last_line(log: Path) -> str:
    """The log's last non-empty line (an error's one-line message, usually)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def failed_step(name: str, message: str) -> dict:
    """The record of a step that could not start."""
    return {"name": name, "command": None, "rc": None, "seconds": 0.0, "log": None, "status": "failed",
            "message": message}


def tests_command(junit: Path | None, extra: list[str]) -> list[str]:
    """pytest on ``tests/gpu`` with the ``gpu`` marker; with ``junit``, an XML file of the outcomes and
    of the facts each test recorded (``record_property``, which junit's ``xunit1`` family writes)."""
    report = ["-o", "junit_family=xunit1", f"--junitxml={junit}"] if junit is not None else []
    return [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-v", *report, *extra]


def throughput_command(figures: Path, device: str, quick: bool) -> list[str]:
    """``benchmarks/gpu_throughput.py`` on ``device`` (cuda or cpu), its ``--quick`` form if asked."""
    return [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--json", str(figures),
            "--device", device, *(["--quick"] if quick else [])]


def doctor_step(out: Path, limit_s: float) -> dict:
    """``python -m cluster.doctor --address ADDR --json out/doctor.json`` against a local Ray started
    here (on loopback, with a token of its own); a failed step when the module is missing."""
    if importlib.util.find_spec(DOCTOR_MODULE) is None:
        return failed_step("doctor", f"No module named {DOCTOR_MODULE}: nothing to run")
    from pretrain.preflight import local_ray_on_loopback

    local_ray_on_loopback()
    import ray

    temp = tempfile.mkdtemp(prefix="gs", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    try:
        ray.init(_temp_dir=temp, log_to_driver=False)
        address = ray.get_runtime_context().gcs_address
        command = [sys.executable, "-m", DOCTOR_MODULE, "--address", address, "--json", str(out / "doctor.json")]
        return run_step("doctor", command, out / "doctor.log", limit_s)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


# --------------------------------------------------------------------------------------------- summary


def read_junit(path: Path) -> list[dict]:
    """Each test of a junit XML file: ``{"test", "outcome" (passed|failed|error|skipped), "seconds",
    "message" (failures and skips), "facts" (what it recorded)}``. Missing file: no tests."""
    if not path.is_file():
        return []
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        record = {"test": f"{case.get('classname')}::{case.get('name')}", "outcome": "passed",
                  "seconds": round(float(case.get("time") or 0), 2)}
        for outcome in ("failure", "error", "skipped"):
            found = case.find(outcome)
            if found is not None:
                record["outcome"] = {"failure": "failed"}.get(outcome, outcome)
                record["message"] = (found.get("message") or "").strip()
                break
        facts = {p.get("name"): json.loads(p.get("value")) for p in case.iter("property")}
        if facts:
            record["facts"] = facts.get("facts", facts)
        tests.append(record)
    return tests


def read_json(path: Path):
    """A step's JSON output, or None where the step wrote none (or wrote half of one)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarise(device: dict, steps: list[dict], tests: list[dict], throughput, doctor, started: float,
              cpu_allowed: bool) -> dict:
    """The suite's ``summary.json``. The tests' step fails on a GPU when a test was skipped there."""
    counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "error", "skipped")}
    for step in steps:
        if step["name"] == "tests" and device["cuda"] and counts["skipped"] and not cpu_allowed:
            step["status"], step["message"] = "failed", f"{counts['skipped']} tests skipped on a GPU"
        if step["name"] == "tests" and not tests and step["status"] == "passed":
            step["status"], step["message"] = "failed", "no test ran (no junit XML)"
    return {"suite": "make test-gpu (benchmarks/gpu_suite.py)",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(), "device": device, "cpu_allowed": cpu_allowed,
            "ok": all(s["status"] == "passed" for s in steps), "wall_s": round(time.perf_counter() - started, 1),
            "steps": steps, "test_counts": counts, "tests": tests, "throughput": throughput, "doctor": doctor}


def merge_steps(previous: list[dict], new: list[dict]) -> list[dict]:
    """The steps run now, and an earlier call's records of the steps not run again (a suite split over
    several calls into one folder: ``--steps tests``, then ``--steps throughput,doctor``)."""
    by_name = {s["name"]: s for s in previous}
    by_name.update({s["name"]: s for s in new})
    return [by_name[name] for name in LIMITS if name in by_name]


def git_commit() -> str | None:
    """The checkout's commit (with ``+changes`` when files differ from it), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def print_summary(summary: dict, folder: Path) -> None:
    """One line a step and a closing line naming the folder."""
    for step in summary["steps"]:
        note = f": {step['message']}" if step.get("message") else ""
        print(f"{step['name']:<11} {step['status']:<7} {step['seconds']:7.1f} s{note}")
    c = summary["test_counts"]
    print(f"tests: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped")
    print(f"{'all steps passed' if summary['ok'] else 'SOME STEPS FAILED'}; results and logs in {folder}")


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: benchmarks/results/gpu/<date>-<gpu>, a new one)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run every step without a GPU (the benchmark's --quick CPU form): checks the runner")
    p.add_argument("--quick", action="store_true", help="the benchmark's --quick form on any device")
    p.add_argument("--steps", default=",".join(LIMITS),
                   help=f"the steps to run, comma-separated, of {', '.join(LIMITS)} (default: all)")
    p.add_argument("--pytest-args", default="", help="more pytest arguments, one string (e.g. '-x -k eval')")
    for step, limit in LIMITS.items():
        p.add_argument(f"--{step}-limit", type=float, default=limit, help=f"seconds the {step} step may take")
    args = p.parse_args(argv)
    chosen = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(chosen) - set(LIMITS))
    if unknown or not chosen:
        p.error(f"--steps: {', '.join(unknown) or 'none given'}; choose from {', '.join(LIMITS)}")
    started = time.perf_counter()
    device = device_facts()
    pytest_extra = args.pytest_args.split()
    if not device["cuda"] and not args.allow_cpu:
        # the tests still run, so each says why it skips; pytest's status is the suite's
        rc = subprocess.run(tests_command(None, pytest_extra), cwd=ROOT).returncode
        print(f"{device['reason']}: the measurements need a GPU; nothing written")
        return rc

    default_name = folder_name(datetime.date.today(), device.get("name", "cpu"))
    out = new_folder(RESULTS, default_name) if args.out is None else args.out
    out.mkdir(parents=True, exist_ok=True)
    # Ray's token for this suite's Rays (the tests' and the doctor's): one of its own, so that no local
    # ray.init writes one into ~/.ray
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    runs = {
        "tests": lambda: run_step("tests", tests_command(out / "junit.xml", pytest_extra), out / "pytest.log",
                                  args.tests_limit),
        "throughput": lambda: run_step(
            "throughput", throughput_command(out / "gpu_throughput.json", "cuda" if device["cuda"] else "cpu",
                                             args.quick or not device["cuda"]),
            out / "gpu_throughput.log", args.throughput_limit),
        "doctor": lambda: doctor_step(out, args.doctor_limit),
    }
    previous = (read_json(out / SUMMARY) or {}).get("steps", [])
    for name in chosen:
        for file in OUTPUTS[name]:
            (out / file).unlink(missing_ok=True)
    steps = merge_steps(previous, [runs[name]() for name in LIMITS if name in chosen])
    summary = summarise(device, steps, read_junit(out / "junit.xml"), read_json(out / "gpu_throughput.json"),
                        read_json(out / "doctor.json"), started, args.allow_cpu)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary, out)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
