"""Distributed helpers that answer sensibly with no process group (rank 0, world 1, identity).

The reductions used inside losses are autograd-aware: the backward of a sum over ranks is the sum
of the incoming gradients over ranks. Under DDP, which averages parameter gradients over W ranks,
this gives exactly the gradient of the loss computed on the global batch.

Collectives are device-strict once the training loop has bound the rank's device
(:func:`bind_device`): a tensor elsewhere is refused with one line, with or without a process group.
NCCL takes CUDA tensors only, so a CPU tensor in a collective crashes every multi-GPU run; gloo
would accept it, and the check makes the CPU tests fail on it the way a GPU cluster would.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


_DEVICE: torch.device | None = None


def bind_device(device: torch.device | str | None) -> None:
    """Make the collectives refuse tensors that are not on ``device`` (None: accept any device)."""
    global _DEVICE
    _DEVICE = None if device is None else torch.device(device)


def _on_rank_device(t: torch.Tensor, what: str) -> torch.Tensor:
    if _DEVICE is not None and t.device != _DEVICE:
        raise ValueError(f"{what}: tensor on {t.device} but this rank's device is {_DEVICE}; collectives take "
                         f"tensors on the rank's device (NCCL refuses any other)")
    return t


def is_distributed() -> bool:
    """True when a default process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks, 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _AllGatherCat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim, ctx.size = dim, t.shape[dim]
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.size
        return grad.narrow(ctx.dim, start, ctx.size), None


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks, differentiable (any shape). Identity without a process group."""
    _on_rank_device(t, "all_reduce_sum")
    return _AllReduceSum.apply(t) if is_distributed() else t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks, detached (for log-sum-exp shifts)."""
    t = _on_rank_device(t, "all_reduce_max").detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_mean_detached(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks, detached: for logging metrics."""
    t = _on_rank_device(t, "all_reduce_mean_detached").detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def rank_ordered_mean_hook(_state, bucket):  # no return annotation: DDP checks it against the real Future type
    """A DDP communication hook: each gradient's mean over the ranks, summed rank 0 first.

    DDP's own all-reduce adds an element's terms in an order set by where the element falls in its
    bucket (the ring's chunks), and DDP lays its buckets out twice: for a launch's first backward, and
    again from the order the gradients became ready. With three or more ranks, (a + b) + c is not
    a + (b + c) in floating point, so the first step after a restart would round otherwise than the same
    step of an uninterrupted run. Gathering every rank's bucket and adding them in rank order makes
    each element's sum independent of the layout. It moves W buckets a rank instead of about two."""
    tensor = bucket.buffer()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    fut = dist.all_gather(parts, tensor, async_op=True).get_future()

    def mean(_fut) -> torch.Tensor:
        total = parts[0].clone()
        for part in parts[1:]:
            total += part
        return total.div_(len(parts))

    return fut.then(mean)


def all_gather_cat(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``t`` from every rank along ``dim`` (rank order), differentiable.

    All ranks must pass tensors of the same shape. Identity without a process group.
    """
    _on_rank_device(t, "all_gather_cat")
    return _AllGatherCat.apply(t, dim) if is_distributed() else t


def global_diag_mask(n_local: int, n_global: int | None = None, device=None) -> torch.Tensor:
    """Positive mask [n_local, n_global] for local rows scored against gathered columns.

    Row i of this rank is paired with column ``rank() * n_local + i`` (its own y after
    ``all_gather_cat``). ``n_global`` defaults to ``n_local * world_size()``.
    """
    n_global = n_local * world_size() if n_global is None else n_global
    mask = torch.zeros(n_local, n_global, dtype=torch.bool, device=device)
    idx = torch.arange(n_local, device=device)
    mask[idx, rank() * n_local + idx] = True
    return mask
