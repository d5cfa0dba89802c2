"""Two gloo ranks with batch B against one process with batch 2B: identical gradients.

Each rank scores its local rows x against the y of every rank (``all_gather_cat``), so the union
over ranks of the score matrices is the single process's [2B, 2B] matrix. η-MINE needs no
reduction (its loss is linear in both means); DV, SMILE and InfoNCE use ``reduce=True``. The same
for the training loop's step: the DDP-wrapped InfoMax task on two ranks updates as one rank with 2B.
"""
import os

import pytest
import torch

from pretrain import dist as pdist
from pretrain import estimators as E
from pretrain.train import build_optimizers, build_task_from_config, train_step, wrap_ddp
from tests.support.ranks import run_ranks
from tests.support.run_states import tiny_cfg

B, D = 6, 3
KWARGS = {"eta-mine-clip": {"tau": 0.5}}  # small enough that some of these scores are clipped


class Separable(torch.nn.Module):
    """f(x, y) = <g(x), h(y)>; holds the estimator so DDP averages η with the critic."""

    def __init__(self, name, reduce):
        super().__init__()
        torch.manual_seed(0)
        self.g = torch.nn.Linear(D, 4)
        self.h = torch.nn.Linear(D, 4)
        self.est = E.build(name, reduce=reduce) if reduce else E.build(name, **KWARGS.get(name, {}))

    def forward(self, x, y):
        hy = pdist.all_gather_cat(self.h(y))
        scores = self.g(x) @ hy.T
        return self.est(scores, pdist.global_diag_mask(x.shape[0], hy.shape[0])).loss


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * B, D, generator=g)
    return x, 0.8 * x + 0.6 * torch.randn(2 * B, D, generator=g)


def grads_of(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.requires_grad}  # eta-mine-ema: η has none


def _worker(rank, world, out_dir, cases):
    """Rank ``rank`` of 2 (:func:`tests.support.ranks.run_ranks`): each case on this rank's half of the rows."""
    x, y = data()
    sl = slice(rank * B, (rank + 1) * B)
    results = {}
    for name, reduce in cases:
        model = torch.nn.parallel.DistributedDataParallel(Separable(name, reduce))
        loss = model(x[sl], y[sl])
        loss.backward()
        grads = grads_of(model.module)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        E.eta_step(model.module, opt, 0)  # Algorithm 1's step: closed-form η rules, then Adam
        results[f"{name}/{reduce}"] = {"grads": grads, "loss": loss.detach(), "eta_after_step": {k: v.detach().clone() for k, v in model.module.est.named_parameters()}}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


CASES = [("eta-mine", False), ("eta-mine-clip", False), ("eta-mine-ema", False), ("dv-mine", True), ("smile", True), ("infonce", True), ("dv-mine", False)]
ETA = ["eta-mine", "eta-mine-clip", "eta-mine-ema"]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    run_ranks(2, f"{__name__}:_worker", str(tmp), CASES)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


def single_process(name, reduce):
    model = Separable(name, reduce)
    x, y = data()
    loss = model(x, y)
    loss.backward()
    return grads_of(model), loss.detach()


@pytest.mark.parametrize("name,reduce", CASES[:6])
def test_two_ranks_equal_one_rank_with_double_batch(two_rank_results, name, reduce):
    single, single_loss = single_process(name, reduce)
    for rank_result in two_rank_results:
        got = rank_result[f"{name}/{reduce}"]["grads"]
        assert got.keys() == single.keys()
        for k in single:
            torch.testing.assert_close(got[k], single[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
    losses = [r[f"{name}/{reduce}"]["loss"] for r in two_rank_results]
    if reduce:  # reduced losses are the global loss on every rank
        for loss in losses:
            torch.testing.assert_close(loss, single_loss)
    else:  # local means: their average is the global loss
        torch.testing.assert_close((losses[0] + losses[1]) / 2, single_loss)


@pytest.mark.parametrize("name", ETA)
def test_eta_identical_on_both_ranks(two_rank_results, name):
    a, b = (r[f"{name}/False"]["eta_after_step"]["eta"] for r in two_rank_results)
    assert a.item() != 0.0 and a.item() == b.item()


def test_ema_eta_is_the_closed_form_over_both_ranks(two_rank_results):
    """eta-mine-ema's warm start and first update read log mean_marg e^f of every rank's pairs:
    the single process with the double batch ends with the same η."""
    model = Separable("eta-mine-ema", False)
    x, y = data()
    model(x, y).backward()
    E.eta_step(model, torch.optim.Adam(model.parameters(), lr=1e-2), 0)
    for r in two_rank_results:
        torch.testing.assert_close(r["eta-mine-ema/False"]["eta_after_step"]["eta"], model.est.eta.detach(), rtol=1e-6, atol=1e-7)


def test_unreduced_dv_is_biased_across_ranks(two_rank_results):
    """Without reduce, per-rank DV is not the global DV: the gradients differ (why reduce exists)."""
    single, _ = single_process("dv-mine", False)
    got = two_rank_results[0]["dv-mine/False"]["grads"]
    assert any(not torch.allclose(got[k], single[k], rtol=1e-4, atol=1e-6) for k in single)


def test_helpers_without_process_group():
    t = torch.randn(3, requires_grad=True)
    assert pdist.rank() == 0 and pdist.world_size() == 1 and not pdist.is_distributed()
    assert pdist.all_reduce_sum(t) is t and pdist.all_gather_cat(t) is t
    torch.testing.assert_close(pdist.all_reduce_mean_detached(t), t.detach())
    assert torch.equal(pdist.global_diag_mask(3), torch.eye(3, dtype=torch.bool))


def task_cfg():
    return tiny_cfg("infomax", "eta-mine", "task.kwargs.hidden_dim=32", "task.kwargs.embed_dim=16")


def task_halves() -> list[torch.Tensor]:
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return [images[:8], images[8:]]


def task_with_fixed_bn(cfg):
    """The configured task, seeded, with batch norm in eval mode: per-rank batch statistics
    (there is no SyncBatchNorm on CPU) would otherwise differ from whole-batch ones."""
    torch.manual_seed(0)
    task = build_task_from_config(cfg, None)
    for m in task.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return task


def task_step(rank, world, out):
    """One train_step of the real loop (DDP-wrapped task, η inside) on this rank's half of the batch."""
    cfg = task_cfg()
    task = task_with_fixed_bn(cfg)
    main, eta = build_optimizers(cfg, task)
    train_step(wrap_ddp(task, torch.device("cpu")), task, {"images": task_halves()[rank]}, 0, main, eta)
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in task.named_parameters()}
        torch.save({"grads": grads, "eta": task.estimator.eta.detach().clone()}, out)


def test_the_task_step_on_two_ranks_with_batch_b_equals_one_rank_with_2b(tmp_path):
    """η-MINE is linear in its two means, so DDP's average over 2 ranks of batch B is exactly the
    gradient of one rank whose loss averages the same 2B joint and marginal pairs; η, updated by
    its own Adam from that averaged gradient, is the same too."""
    run_ranks(2, f"{__name__}:task_step", str(tmp_path / "two.pt"))
    two = torch.load(tmp_path / "two.pt", weights_only=True)

    cfg = task_cfg()
    task = task_with_fixed_bn(cfg)  # one process, no process group, the 2B pairs in one loss
    main, eta = build_optimizers(cfg, task)
    halves = task_halves()
    loss = (task({"images": halves[0]})["loss"] + task({"images": halves[1]})["loss"]) / 2
    loss.backward()
    for name, p in task.named_parameters():
        torch.testing.assert_close(two["grads"][name], p.grad, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")
    assert task.estimator.eta.grad.abs() > 1e-4
    eta.step()
    torch.testing.assert_close(two["eta"], task.estimator.eta.detach(), rtol=0, atol=1e-6)
