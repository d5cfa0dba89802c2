"""The driver's metrics tail and progress line, without Ray (the Ray run is in test_train_ray.py)."""
from __future__ import annotations

import io
import json

from console.progress import ETA_PENDING, LINE_RE, WALL_TIME, MetricsTail, ProgressLine, format_line


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
    assert m and m["mi"] is None and m["eta"] is None and m["eta_time"] == ETA_PENDING and m["workers"] is None
    m = LINE_RE.match(format_line({**plain, "workers": 2}, total=10))  # an elastic run's group size
    assert m["workers"] == "2" and " | 2 workers | " in format_line({**plain, "workers": 2}, total=10)


def test_eta_uses_the_time_between_reports(monkeypatch):
    clock = iter([110.0, 130.0])  # records without rank 0's time: the driver's clock
    monkeypatch.setattr("console.progress.time.time", lambda: next(clock))
    out = io.StringIO()
    line = ProgressLine(total_steps=100, stream=out)
    line(record(10))  # t=110: Ray's start-up is before this report, so no ETA yet
    line(record(30))  # t=130: 20 steps in 20 s, 70 to go
    first, second = out.getvalue().splitlines()
    assert LINE_RE.match(first)["eta_time"] == ETA_PENDING and LINE_RE.match(second)["eta_time"] == "0:01:10"


def test_eta_of_records_read_together_comes_from_rank0s_times(monkeypatch):
    """The driver reads metrics.jsonl every half second, so records of fast steps arrive together;
    their own times (written by rank 0) give the ETA, not the moment they were read."""
    monkeypatch.setattr("console.progress.time.time", lambda: 500.0)  # one read for all three
    out = io.StringIO()
    line = ProgressLine(total_steps=100, stream=out)
    for step, t in ((1, 200.0), (2, 200.5), (3, 201.0)):
        line({**record(step), WALL_TIME: t})
    etas = [LINE_RE.match(x)["eta_time"] for x in out.getvalue().splitlines()]
    assert etas == [ETA_PENDING, "0:00:49", "0:00:48"]  # 0.5 s a step: 98 and 97 steps to go


def test_bar_in_a_log_prints_whole_lines_not_redraws():
    from console.progress import bar

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
