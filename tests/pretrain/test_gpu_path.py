"""The GPU path, checked on a CPU: collectives take tensors on the rank's device only, a resume reads
the checkpoint to the CPU, a training step reads nothing back from the device and a report reads it
(counted, not timed), and a non-finite step holds every optimiser until the report.

No GPU here, so the tests make the mistakes visible another way: the rank's device is bound to the
CPU while ``with torch.device("meta")`` sends every tensor made without an explicit device elsewhere
(a collective then refuses it, as NCCL refuses a CPU tensor); and a dispatch mode counts every
operation that needs a tensor's values on the host.
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from pretrain import dist, estimators
from pretrain.checkpoint import capture_rng, save_checkpoint
from pretrain.online_probe import OnlineProbe
from pretrain.step_flags import StepFlags
from tests.support.run_states import tiny_cfg
from pretrain.plan import example_batch
from pretrain.train import (MetricWindow, build_optimizers, build_task_from_config, eta_across_ranks,
                            permutations_of, resume, to_device, train_step)

aten = torch.ops.aten
# operations whose result depends on tensor values the host must wait for
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten.equal.default,
            aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default}
# Tensor methods that copy values out without a dispatched op on a CPU tensor
SYNC_METHODS = {"tolist", "numpy", "cpu"}


class HostSyncCounter(TorchDispatchMode):
    """Counts host reads of tensor values: ``.item()``/``float()``/``bool()``, boolean-mask indexing,
    ``nonzero``, ``unique``, ``torch.equal``, ``.tolist()``, ``.numpy()``, ``.cpu()``."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        counter = self

        class Methods(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if getattr(func, "__name__", "") in SYNC_METHODS:
                    counter.ops.append(func.__name__)
                return func(*args, **(kwargs or {}))

        self.methods = Methods()

    def __enter__(self):
        self.methods.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.methods.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func is aten.index.Tensor and any(
            t is not None and t.dtype == torch.bool for t in args[1])
        if func in SYNC_OPS or bool_index:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def bound_cpu():
    dist.bind_device("cpu")
    yield
    dist.bind_device(None)


def test_the_counter_sees_each_kind_of_host_read():
    x = torch.randn(6)
    reads = [lambda: float(x.sum()), lambda: bool(x.sum() > 0), lambda: x[x > 0], lambda: x.tolist(),
             lambda: torch.equal(x, x), lambda: x.unique(), lambda: x.nonzero(), lambda: (x > 0).any().item()]
    for read in reads:
        with HostSyncCounter() as counter:
            read()
        assert len(counter.ops) == 1, counter.ops
    with HostSyncCounter() as counter:
        torch.where(x > 0, x, 0).sum() / (x > 0).sum()  # a masked mean that stays on the device
    assert counter.ops == []


def test_collectives_refuse_a_tensor_off_the_rank_device():
    dist.bind_device("meta")
    try:
        with pytest.raises(ValueError, match="tensor on cpu but this rank's device is meta"):
            dist.all_reduce_mean_detached(torch.zeros(2))
        with pytest.raises(ValueError, match="all_gather_cat"):
            dist.all_gather_cat(torch.zeros(2))
        assert dist.all_reduce_sum(torch.zeros(2, device="meta")).device.type == "meta"
    finally:
        dist.bind_device(None)


@pytest.mark.parametrize("kind,estimator,extra", [("jigsaw-ce", None, ())]
                         + [(kind, name, ()) for kind in ("jigsaw-mi", "infomax") for name in estimators.names()]
                         + [("jigsaw-mi", "eta-mine", ("data.augment_on=device",)),
                            ("jigsaw-mi", "eta-mine", ("data.unique_tiles=false",))])
def test_a_step_reads_nothing_back_and_a_report_reads_the_device(bound_cpu, kind, estimator, extra):
    """Every bound of the registry, on both MI tasks, and the jigsaw options: no read of the device a
    step (the finite check stays there, pretrain.step_flags); a report reads the flags and the metrics."""
    cfg = tiny_cfg(kind, estimator, *extra)
    permutations = permutations_of(cfg)
    torch.manual_seed(0)
    task = build_task_from_config(cfg, permutations)
    main_opt, eta_opt = build_optimizers(cfg, task)
    window = MetricWindow("cpu")
    for step in range(2):
        batch = to_device(task.host_prepare(example_batch(cfg, permutations, seed=step)), torch.device("cpu"))
        # every tensor made without an explicit device now lands on meta, off the rank's device
        with torch.device("meta"), HostSyncCounter() as counter:
            out = train_step(task, task, batch, step, main_opt, eta_opt)
            window.add(out["metrics"], samples=4)
        assert counter.ops == []
    with torch.device("meta"), HostSyncCounter() as counter:
        read = out["flags"].read()
        metrics = window.reduce(1, wall_s=1.0)
        metrics.update(eta_across_ranks(task))
    assert read.nonfinite is None and not read.notice
    # the flags, the metric window and, for a bound with η, η of every rank
    assert len(counter.ops) == 2 + ("eta" in metrics), counter.ops
    assert metrics["samples_per_s"] == 8 and torch.isfinite(torch.tensor(metrics["loss"]))
    if estimator == "eta-mine":
        assert metrics["eta"] == task.estimator.eta.item()


def test_a_nonfinite_step_holds_every_optimiser_until_the_report(bound_cpu):
    """A NaN at step 1, then finite steps: from step 1 on no parameter and no optimiser state moves (main,
    η, online probe), though the steps after it are finite; the report's read names step 1 and its loss."""
    cfg = tiny_cfg("infomax", "eta-mine")
    torch.manual_seed(0)
    task = build_task_from_config(cfg, None)
    main_opt, eta_opt = build_optimizers(cfg, task)
    probe = OnlineProbe(task.encoder, 3, lr=1e-2, seed=0, device="cpu")
    flags = StepFlags("cpu", main_opt, eta_opt, probe.optimizer)

    def step(i: int, nan: bool = False) -> dict:
        batch = example_batch(cfg, None, seed=i)
        if nan:
            batch["images"][0, 0, 0, 0] = float("nan")
        batch = task.host_prepare(batch)
        out = train_step(task, task, batch, i, main_opt, eta_opt, flags=flags)
        probe.step({**batch, "label": torch.arange(len(batch["images"])) % 3})
        return out

    def state() -> list[torch.Tensor]:
        tensors = [p.detach().clone() for p in list(task.parameters()) + list(probe.head.parameters())]
        for opt in (main_opt, eta_opt, probe.optimizer):
            tensors += [t.clone() for s in opt.state.values() for t in s.values()]
        return tensors

    step(0)
    assert flags.read().nonfinite is None
    good = state()
    with HostSyncCounter() as counter:
        for i in range(1, 4):
            out = step(i, nan=i == 1)
    assert counter.ops == []
    assert out["metrics"]["loss"].isfinite()  # the steps after the NaN are finite, and still held
    read = flags.read()
    assert read.nonfinite["step"] == 1 and read.nonfinite["loss"] != read.nonfinite["loss"]
    assert all(torch.equal(a, b) for a, b in zip(good, state(), strict=True))


def test_resume_reads_the_checkpoint_to_the_cpu_and_places_state_on_the_device(tmp_path):
    cfg = tiny_cfg("jigsaw-mi", "eta-mine")
    permutations = permutations_of(cfg)
    task = build_task_from_config(cfg, permutations)
    main_opt, eta_opt = build_optimizers(cfg, task)
    train_step(task, task, task.host_prepare(example_batch(cfg, permutations)), 0, main_opt, eta_opt)
    rng = capture_rng()
    save_checkpoint(tmp_path, step=1, config={}, task=task, optimizer=main_opt, eta_optimizer=eta_opt, rng=[rng],
                    data_position=[{"epoch": 0, "batch": 1}], permutations=permutations)

    # the rank's "device" is meta: weights and Adam's moments go there, RNG states stay on the CPU
    with torch.device("meta"):
        target = build_task_from_config(cfg, permutations)
    opts = (torch.optim.Adam(target.main_parameters()), torch.optim.Adam(target.eta_parameters()))
    with pytest.warns(UserWarning, match="meta parameter"):  # weights into meta parameters: a no-op
        step, position, states, perms, _ = resume(tmp_path, target, *opts, range(1), 1)
    assert (step, position) == (1, {"epoch": 0, "batch": 1})
    assert torch.equal(states[0]["torch"], rng["torch"]) and states[0]["torch"].device.type == "cpu"
    assert perms.device.type == "cpu" and torch.equal(perms, permutations)
    state = opts[0].state[next(iter(target.main_parameters()))]
    assert state["exp_avg"].device.type == "meta"
