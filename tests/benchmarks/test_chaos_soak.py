"""The chaos soak's quick version (``benchmarks/chaos_soak.py --quick``) end to end, in a process of its
own: it starts its own two-node Ray on 127.0.0.1 and sets Ray's token authentication in its environment,
which must not reach this session's Ray."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# max |Δw| / max |w| between the soak's run and the uninterrupted fixed 4-worker run: what docs/reliability.md
# states for runs at another W at lr 10⁻³ (Adam); the soaks' measured gaps are there too
TOLERANCE = 2e-3

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.timeout(1800)]


def test_quick_chaos_soak_lands_every_fault_shrinks_grows_back_and_ends_near_the_fixed_run(tmp_path):
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    proc = subprocess.run([sys.executable, "benchmarks/chaos_soak.py", "--quick", "--work", str(tmp_path),
                           "--out", str(out)], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    kinds = [e["kind"] for e in figures["events"]]
    planned = [p["kind"] for p in figures["planned"]]
    assert [k for k in kinds if k in planned] == planned  # every fault injected, in the planned order
    loss = kinds.index("node loss")
    assert figures["workers"] == 2  # the quick soak: 2 nodes of 1 CPU
    assert kinds[loss + 1:loss + 5] == ["node marked dead by Ray", "reported on 1 worker", "node restart",
                                        "reported on 2 workers"]
    # 2 workers, 1 after the node's loss, 2 after its return, 1 after the resume at train.num_workers=1
    assert [w["workers"] for w in figures["workers_over_time"]] == [2, 1, 2, 1]
    assert figures["steps_reported"] == list(range(5, figures["steps"] + 1, 5))  # every report's step once
    assert figures["final_step"] == figures["reference_step"] == figures["steps"]
    sent = figures["events"][kinds.index("worker SIGTERM")]
    record = figures["sigterm"]  # preempted.json: the checkpoint the group wrote at the next report
    assert record["signal"] == "SIGTERM" and record["pid"] == sent["pid"] and record["elastic"]
    assert record["step"] > sent["step"] and record["step"] % 5 == 0  # a report's step after the signal
    assert figures["max_abs_dw_over_max_abs_w"] < TOLERANCE
