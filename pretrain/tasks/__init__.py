"""Pretraining tasks: modules that own the encoder, heads/witness and MI bound.

    task = build_task("jigsaw-mi", build_encoder("resnet50"), estimator="eta-mine")
    out = task(batch)            # {"loss": scalar with grad, "mi", "acc", "eta", "normaliser"}
    opt_main = Adam(task.main_parameters(), 1e-4); opt_eta = Adam(task.eta_parameters(), 1e-2)
"""
from __future__ import annotations

from torch import nn

from .base import Task, build_estimator
from .infomax import InfoMax
from .jigsaw_ce import JigsawCE
from .jigsaw_mi import JigsawMI, jigsaw_masks

KINDS = ("jigsaw-ce", "jigsaw-mi", "infomax")


def kinds() -> list[str]:
    """Names of the tasks ``build_task`` knows."""
    return list(KINDS)


def build_task(kind: str, encoder: nn.Module, *, estimator: str | None = None, estimator_kwargs: dict | None = None,
               num_permutations: int = 100, **kwargs) -> Task:
    """Build the task ``kind`` around ``encoder``.

    Args:
        kind: ``jigsaw-ce``, ``jigsaw-mi`` or ``infomax``.
        encoder: from ``pretrain.models.build_encoder``.
        estimator: name of a bound in ``pretrain.estimators`` (MI tasks only; None for jigsaw-ce).
        estimator_kwargs: options of that bound (e.g. ``n_critic`` for η-MINE).
        num_permutations: size of the jigsaw permutation set (ignored by infomax).
        **kwargs: the task's head/witness options (see JigsawCE, JigsawMI, InfoMax).
    """
    if kind == "jigsaw-ce":
        if estimator is not None or estimator_kwargs:
            raise ValueError(f"task 'jigsaw-ce' uses cross-entropy, not an MI estimator; unset estimator (got {estimator!r})")
        return JigsawCE(encoder, num_permutations=num_permutations, **kwargs)
    if kind == "jigsaw-mi":
        est, takes_baseline = build_estimator(kind, estimator, estimator_kwargs)
        return JigsawMI(encoder, est, takes_baseline, num_permutations=num_permutations, **kwargs)
    if kind == "infomax":
        est, takes_baseline = build_estimator(kind, estimator, estimator_kwargs)
        return InfoMax(encoder, est, takes_baseline, **kwargs)
    raise ValueError(f"unknown task {kind!r}; known: {', '.join(KINDS)}")


__all__ = ["Task", "InfoMax", "JigsawCE", "JigsawMI", "build_task", "jigsaw_masks", "kinds"]
