"""The GPU path's first contact with a cluster, checked on a CPU with ``torch.cuda`` faked
(tests/support/fake_cuda.py): a resume restores the rank's own CUDA RNG state, and a GPU that cannot
run the config (no CUDA seen by torch, bf16 without Ampere) is named in one line."""
from __future__ import annotations

import torch

from pretrain import checkpoint as ck
from tests.support.fake_cuda import FakeCuda


def test_resume_restores_the_rank_s_own_cuda_rng_state_on_a_node_with_fewer_gpus(monkeypatch):
    # rank on device 3 of an 8-GPU node (Ray shows every worker all of the node's GPUs)
    node = FakeCuda(monkeypatch, count=8, current=3)
    state = ck.capture_rng()
    assert torch.equal(state["cuda"], node.states[3])
    # the restart lands on device 1 of a 2-GPU node: it gets device 3's state, the others are untouched
    other = FakeCuda(monkeypatch, count=2, current=1)
    untouched = other.states[0].clone()
    ck.restore_rng(state)
    assert torch.equal(other.states[1], node.states[3]) and torch.equal(other.states[0], untouched)
