"""What a run says, without Ray: Ray's log records go to the run's ray.log, the end-of-run summary and
curves.png, and the fit of a local run's loader processes to the machine's CPUs."""
from __future__ import annotations

import json
import logging

import pytest

from pretrain.config import ConfigError, load_config
from pretrain.preflight import fit_to_local_cpus
from pretrain.ray_output import ray_to_log
from pretrain.summary import read_records, summary_lines, write_curves


def test_ray_log_records_go_to_the_file_and_the_console_handlers_come_back(tmp_path, capfd):
    import ray  # noqa: F401 - sets up the "ray" logger and its console handler

    ray_logger = logging.getLogger("ray")
    before = list(ray_logger.handlers)
    with ray_to_log(tmp_path / "ray.log"):
        logging.getLogger("ray.train.v2.something").error("PreemptionWatcher could not start")
        logging.getLogger("ray").warning("Token authentication is enabled")
    assert "PreemptionWatcher" not in capfd.readouterr().err
    text = (tmp_path / "ray.log").read_text()
    assert "ERROR ray.train.v2.something: PreemptionWatcher could not start" in text and "Token authentication" in text
    assert ray_logger.handlers == before


def test_summary_and_curves_from_metrics(tmp_path):
    records = [{"step": s, "loss": -0.1 * s, "mi": 0.1 * s, "eta": 0.01, "samples_per_s": 100.0 * s, "time": s}
               for s in (4, 8)]
    lines = [json.dumps(r) for r in records] + [json.dumps({**records[1], "loss": -9.0}), '{"step": 12, "loss']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    read = read_records(tmp_path / "metrics.jsonl")  # one record a step (a restart's repeat wins), a cut line skipped
    assert [r["step"] for r in read] == [4, 8] and read[1]["loss"] == -9.0
    curves = write_curves(tmp_path, read, "run")
    assert open(curves, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = summary_lines(read, wall_s=75, samples_per_image=2, checkpoint=tmp_path / "checkpoint_000000008",
                         run_dir=tmp_path, shards="data/shards/c", curves=curves)
    assert text[0] == "done: step 8 in 0:01:15 (wall, Ray's start-up included), 300.0 images/s (mean of the reports); " \
                      "final loss -9, MI 0.8, η 0.01"
    assert text[-1] == f"next, a linear probe of the encoder: python -m eval.linear checkpoint={tmp_path} data=data/shards/c"
    assert write_curves(tmp_path, [{"step": 1, "samples_per_s": 1.0}], "run") is None  # nothing to draw


def test_loader_processes_fit_the_cpus_of_a_local_ray():
    def cfg(*extra):
        return load_config(None, ["data.shards=/nonexistent", "train.threads_per_worker=1", *extra])

    fits = cfg("data.loader_workers=2", "train.num_workers=1")
    assert fit_to_local_cpus(fits, 3) is None and fits.data.loader_workers == 2
    lowered = cfg("data.loader_workers=2", "train.num_workers=2")
    assert fit_to_local_cpus(lowered, 4) == ("this machine has 4 CPUs: data.loader_workers=2 lowered to 1 so that "
                                             "2 rank(s) of train.threads_per_worker + data.loader_workers CPUs fit")
    assert lowered.data.loader_workers == 1
    with pytest.raises(ConfigError, match=r"^train.num_workers=4 x train.threads_per_worker=1 need 4 CPUs and this "
                                          r"machine has 2 \(a local Ray cannot grow\)"):
        fit_to_local_cpus(cfg("train.num_workers=4"), 2)
