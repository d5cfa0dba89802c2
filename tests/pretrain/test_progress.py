"""The driver's metrics tail and progress line, without Ray (the Ray run is in test_train_ray.py)."""
from __future__ import annotations

import io
import json

from pretrain.progress import LINE_RE, MetricsTail, ProgressLine, format_line


def record(step, **extra):
    return {"step": step, "loss": -0.5, "mi": 0.5, "eta": 0.01, "samples_per_s": 320.0,
            "data_wait_fraction": 0.25, **extra}


def test_tail_reads_only_complete_lines_and_survives_a_failing_listener(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(record(1)) + "\n")  # written before the launch (a resumed run): skipped
    seen = []

    def broken(_):
        raise OSError("tracking server went away")

    tail = MetricsTail(path, [broken, seen.append])
    with open(path, "a") as f:
        f.write(json.dumps(record(2)) + "\n" + json.dumps(record(3))[:20])  # rank 0 mid-write
    tail.poll()
    assert [r["step"] for r in seen] == [2] and tail.listeners == [seen.append]
    with open(path, "a") as f:
        f.write(json.dumps(record(3))[20:] + "\n" + "{not json\n" + json.dumps(record(4)) + "\n")
    tail.poll()
    assert [r["step"] for r in seen] == [2, 3, 4]


def test_progress_line_fields_and_jigsaw_images_per_second():
    line = format_line(record(40, eta=0.0105), total=300, samples_per_image=16, eta_s=112)
    m = LINE_RE.match(line)
    assert m, line
    assert (m["step"], m["total"], m["percent"]) == ("40", "300", "13")
    assert float(m["images_per_s"]) == 20.0 and m["data_wait"] == "25" and m["eta_time"] == "0:01:52"
    plain = {"step": 5, "loss": 4.6, "samples_per_s": 10.0}  # jigsaw-ce: no MI, no η
    m = LINE_RE.match(format_line(plain, total=10))
    assert m and m["mi"] is None and m["eta"] is None and m["eta_time"] == "-"


def test_eta_uses_the_time_between_reports(monkeypatch):
    clock = iter([100.0, 110.0, 130.0])
    monkeypatch.setattr("pretrain.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    line = ProgressLine(total_steps=100, stream=out)  # start at t=100
    line(record(10))  # t=110: Ray's start-up is in this interval, so no ETA yet
    line(record(30))  # t=130: 20 steps in 20 s, 70 to go
    first, second = out.getvalue().splitlines()
    assert LINE_RE.match(first)["eta_time"] == "-" and LINE_RE.match(second)["eta_time"] == "0:01:10"


def test_bar_in_a_log_prints_whole_lines_not_redraws():
    from pretrain.progress import bar

    log = io.StringIO()  # not a terminal
    with bar(total=1000, desc="features train", stream=log, leave=False) as b:
        for _ in range(1000):
            b.set_postfix(loss="0.5", refresh=False)
            b.update(1)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert lines[0].startswith("features train:   0%") and "1000/1000" in lines[-1]
    assert len(lines) < 10  # a line every 30 s and at the end, not one per update
