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


def test_a_stage_has_a_numbered_header_and_can_keep_its_output_for_later(tmp_path, capsys):
    """The table stage runs with ``echo=False``: the demo prints its table once, at the end."""
    output = run([sys.executable, "-c", STAGE, "0"], tmp_path / "stage.log", "stage 11/11: the table", echo=False)
    shown = capsys.readouterr().out.splitlines()
    assert shown[:2] == ["", "stage 11/11: the table"] and not [line for line in shown if line.startswith("    ")]
    assert "run directory: /runs/x" in output


def test_the_reading_sets_each_encoder_against_the_random_baseline_of_its_architecture(tmp_path):
    import json

    from demo.__main__ import RUNS, reading, tag_of

    top1 = {"infomax η-MINE": 97.2, "infomax DV-MINE": 96.5, "jigsaw η-MINE": 79.4,
            "infomax random init": 93.9, "jigsaw random init": 42.9}
    assert {name for name, _, _ in RUNS} < set(top1)
    for name, value in top1.items():
        (tmp_path / tag_of(name)).mkdir()
        (tmp_path / tag_of(name) / "results.json").write_text(json.dumps({"top1": {"mean": value, "std": 0.1}}))
    text = reading(tmp_path)
    assert "infomax η-MINE 97.2, infomax DV-MINE 96.5 against 93.9" in text
    assert "jigsaw encoder reaches 79.4 against 42.9" in text
