"""Pretraining tasks: modules that own the encoder, heads/witness and MI bound.

    task = build_task("jigsaw-mi", build_encoder("resnet50"), estimator="eta-mine")
    out = task(batch)            # {"loss": scalar with grad, "mi", "acc", "eta", "normaliser"}
    opt_main = Adam(task.main_parameters(), 1e-4); opt_eta = Adam(task.eta_parameters(), 1e-2)

The kinds and what each needs (stream, evaluation protocol, estimator) live in :mod:`.registry`.
"""
from __future__ import annotations

from torch import nn

from data_prep.jigsaw import NUM_PERMUTATIONS

from .base import Task, build_estimator
from .infomax import InfoMax
from .jigsaw_ce import JigsawCE
from .jigsaw_mi import JigsawMI, jigsaw_masks
from .registry import TaskSpec, kinds, register, spec
from .supervised import Supervised

register(TaskSpec("jigsaw-ce", lambda enc, est, takes_baseline, num_permutations, **kw: JigsawCE(enc, num_permutations=num_permutations, **kw),
                  stream="jigsaw", eval_kind="jigsaw", needs_estimator=False))
register(TaskSpec("jigsaw-mi", lambda enc, est, takes_baseline, num_permutations, **kw: JigsawMI(enc, est, takes_baseline, num_permutations=num_permutations, **kw),
                  stream="jigsaw", eval_kind="jigsaw", needs_estimator=True))
register(TaskSpec("infomax", lambda enc, est, takes_baseline, num_permutations, **kw: InfoMax(enc, est, takes_baseline, **kw),
                  stream="infomax", eval_kind="infomax", needs_estimator=True))
register(TaskSpec("supervised", lambda enc, est, takes_baseline, num_permutations, **kw: Supervised(enc, **kw),
                  stream="infomax", eval_kind="infomax", needs_estimator=False, needs_labels=True))


def build_task(kind: str, encoder: nn.Module, *, estimator: str | None = None, estimator_kwargs: dict | None = None,
               num_permutations: int = NUM_PERMUTATIONS, **kwargs) -> Task:
    """Build the task ``kind`` around ``encoder``.

    Args:
        kind: a registered kind (``kinds()``: ``jigsaw-ce``, ``jigsaw-mi``, ``infomax``, ``supervised``).
        encoder: from ``pretrain.models.build_encoder``.
        estimator: name of a bound in ``pretrain.estimators`` (MI tasks only; None otherwise).
        estimator_kwargs: options of that bound (e.g. ``n_critic`` for η-MINE).
        num_permutations: size of the jigsaw permutation set (ignored by tasks without one).
        **kwargs: the task's head/witness options (see JigsawCE, JigsawMI, InfoMax, Supervised).
    """
    s = spec(kind)
    if not s.needs_estimator:
        if estimator is not None or estimator_kwargs:
            raise ValueError(f"task {kind!r} has no MI estimator; unset estimator (got {estimator!r})")
        return s.build(encoder, None, False, num_permutations, **kwargs)
    est, takes_baseline = build_estimator(kind, estimator, estimator_kwargs)
    return s.build(encoder, est, takes_baseline, num_permutations, **kwargs)


__all__ = ["Task", "TaskSpec", "InfoMax", "JigsawCE", "JigsawMI", "Supervised", "build_task", "jigsaw_masks", "kinds", "register", "spec"]
