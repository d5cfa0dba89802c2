"""``benchmarks/chaos_soak.py --quick``: an elastic run on a two-node Ray on 127.0.0.1 survives a worker
SIGKILL, a worker SIGTERM, the second node's raylet SIGKILLed and restarted, and its driver SIGKILLed and
resumed at another worker count, and ends where the uninterrupted fixed-size run ends (up to float32
rounding passed on by Adam: segments ran at 2 workers, the reference at 4)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.timeout(1800)]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "chaos_soak.py"


def test_quick_chaos_soak_ends_with_the_weights_of_the_uninterrupted_run(tmp_path):
    # its own process, as a user runs it: the script starts Ray nodes in-process and stops what it started
    out = tmp_path / "soak.json"
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1]))
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--seed", "0", "--out", str(out)],
                          env=env, cwd=SCRIPT.parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    kinds = [f["kind"] for f in figures["faults"]]
    for kind in ("worker SIGKILL", "worker SIGTERM", "node raylet SIGKILL", "node restart",
                 "driver SIGKILL, --resume train.num_workers=2"):
        assert kind in kinds, kinds
    assert figures["final_step"] == figures["reference_step"] == figures["steps"]
    assert figures["steps_reported"]  # every report of the run's steps is there (re-run steps kept once)
    counts = [w["workers"] for w in figures["workers_over_time"]]
    assert counts[0] == 4 and 2 in counts  # the resume at 2 workers (a node's loss may show too)
    # lr 1e-3: Adam passes the float32 summation differences of other worker counts on (2.7e-4 measured,
    # benchmarks/results/chaos_soak/); a wrong data order or a lost step moves the weights far more
    assert figures["max_abs_dw_over_max_abs_w"] < 1e-2
