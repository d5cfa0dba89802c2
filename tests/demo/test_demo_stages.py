"""``make demo`` shows each stage's output as it comes (Ray's per-process lines only in the log)."""
import sys

import pytest

from demo.__main__ import run, run_dir_of

STAGE = """
import sys
print("step 10/20 (50%) | loss -0.4456 | 624.4 images/s | data wait 24% | ETA 0:00:01")
print("\\x1b[36m(TrainController pid=123)\\x1b[0m Requesting resources")
print("probe seed 0: 100%| 3/3", file=sys.stderr)
print("run directory: /runs/x")
sys.exit(int(sys.argv[1]))
"""


def test_stage_output_reaches_console_and_log(tmp_path, capsys):
    log = tmp_path / "stage.log"
    output = run([sys.executable, "-c", STAGE, "0"], log)
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]  # the stage's lines
    assert shown == ["    step 10/20 (50%) | loss -0.4456 | 624.4 images/s | data wait 24% | ETA 0:00:01",
                     "    probe seed 0: 100%| 3/3", "    run directory: /runs/x"]
    assert log.read_text() == output and "(TrainController pid=123)" in output
    assert run_dir_of(output) == "/runs/x"


def test_failing_stage_exits_naming_its_log_and_shows_what_was_hidden(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"stage failed \(exit 3\); full log in .*stage.log"):
        run([sys.executable, "-c", STAGE, "3"], tmp_path / "stage.log")
    assert "(TrainController pid=123)" in capsys.readouterr().err  # where a worker's traceback would be
