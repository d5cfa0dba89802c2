"""Evaluation's GPU choice on a Ray cluster that cannot grow (the session's local Ray: 2 CPUs, no GPU,
no autoscaler); the autoscaling cluster that grows is tests/cluster/test_eval_autoscaling.py."""
from __future__ import annotations

import time

import pytest

from eval.linear import extraction_nodes, extraction_task

pytestmark = pytest.mark.ray


def test_a_cluster_that_holds_a_cpu_is_taken_as_it_is_and_cuda_without_a_gpu_is_one_line(ray_session, capsys):
    kw = {"device": None, "batch_size": None, "num_workers": None}
    for device in (None, "cpu"):  # a CPU is there: nothing asked for, no wait
        t0 = time.monotonic()
        nodes = extraction_nodes(device, None, wait_s=60)
        assert time.monotonic() - t0 < 30 and capsys.readouterr().out == ""
        assert extraction_task({**kw, "device": device}, nodes)[1] == {"num_cpus": 1, "num_gpus": 0}
    with pytest.raises(ValueError, match=r"^device=cuda but the Ray cluster has no GPU node after "
                                         r"resource_wait_s=0.5; add GPU nodes, wait longer, or set device=cpu$"):
        extraction_nodes("cuda", 2, wait_s=0.5, poll_s=0.1)
    assert "waiting up to 0.5 s (resource_wait_s) for a GPU node for feature extraction" in capsys.readouterr().out
