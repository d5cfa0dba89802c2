"""The training step of ``pretrain.train`` run by W processes (gloo on 127.0.0.1) over V virtual shards
of fixed random images, for ``test_virtual_shards.py``: what the Ray loop does a step (DDP-wrapped task,
each rank's micro-batches, per-shard RNG states, buffers combined over the shards), without Ray, so one
pair of processes can try every bound in a few seconds."""
from __future__ import annotations

import torch

from pretrain import virtual_shards
from pretrain.train import build_optimizers, build_task_from_config, train_step, wrap_ddp
from tests.support.ranks import run_ranks
from tests.support.run_states import tiny_cfg

V = 4  # virtual shards
BATCH = 4  # images per micro-batch
SIZE = 8  # pixels a side


def shard_batch(step: int, shard: int) -> dict:
    """Virtual shard ``shard``'s micro-batch at ``step``: images [BATCH, 3, SIZE, SIZE] from (step, shard) only."""
    return {"images": torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1000 * step + shard))}


def run_bounds(rank: int, world: int, bounds: list[str], steps: int, out: str, restart_at: int | None = None) -> None:
    """``steps`` steps of the InfoMax task with each bound in ``bounds`` on rank ``rank`` of ``world``;
    rank 0 saves ``{bound: task state_dict}`` to ``out``. ``restart_at``: before that step the task and its
    optimisers are built anew from their states and wrapped in a new DDP, as a restarted launch does. With
    ``world`` > 1, rank ``rank`` of a gloo process group that is up."""
    torch.set_num_threads(1)
    shards = virtual_shards.owned(rank, world, V)
    states = {}
    for name in bounds:
        cfg = tiny_cfg("infomax", name, "task.kwargs.hidden_dim=32", "task.kwargs.embed_dim=16",
                       f"model.kwargs.image_size={SIZE}")
        def launch(saved: tuple | None = None):
            """(task, optimisers, DDP model, buffers), from ``saved`` states when given: a launch's set-up."""
            task = build_task_from_config(cfg, None)
            main_opt, eta_opt = build_optimizers(cfg, task)
            if saved is not None:
                for obj, state in zip((task, main_opt, eta_opt), saved):
                    if obj is not None:
                        obj.load_state_dict(state)
            model = wrap_ddp(task, torch.device("cpu"))
            model.train()
            return task, main_opt, eta_opt, model, virtual_shards.StepBuffers(task)

        torch.manual_seed(0)
        task, main_opt, eta_opt, model, buffers = launch()
        rng = virtual_shards.seeded_rng(0, shards)
        for step in range(steps):
            if step == restart_at:
                task, main_opt, eta_opt, model, buffers = launch(
                    (task.state_dict(), main_opt.state_dict(), eta_opt and eta_opt.state_dict()))
            result = train_step(model, task, [shard_batch(step, v) for v in shards], step, main_opt, eta_opt,
                             rng=rng, buffers=buffers)
            assert result["flags"].read().nonfinite is None
        states[name] = {k: v.detach().clone() for k, v in task.state_dict().items()}
    if rank == 0:
        torch.save(states, out)


def spawn_ranks(world: int, bounds: list[str], steps: int, out: str, restart_at: int | None = None) -> None:
    """:func:`run_bounds` on ``world`` ranks (:func:`tests.support.ranks.run_ranks`; in this process when
    ``world`` is 1)."""
    if world == 1:
        run_bounds(0, 1, bounds, steps, out, restart_at)
    else:
        run_ranks(world, f"{__name__}:run_bounds", bounds, steps, out, restart_at)
