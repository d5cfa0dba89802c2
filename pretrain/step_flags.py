"""The non-finite stop and the preemption notice, latched on the device: a step reads nothing back.

Each step all-reduces its mean loss and this rank's preemption notice in one collective (on the device,
never read there); :meth:`StepFlags.update` folds the result into flags that stay on the device:

- ``found_inf`` (float32, 0 or 1): some step so far had a non-finite mean loss. It is every fused
  Adam's ``found_inf`` (the tensor ``torch.amp.GradScaler`` hands to optimisers with
  ``_step_supports_amp_scaling``): while it is 1 the fused kernel leaves the parameters, both moments
  and the step counter as they were. It comes from the all-reduced loss, so it is the same on every rank,
  and once set it stays set: no optimiser moves from the first non-finite step on, on any rank.
- the step and mean loss of the first non-finite step, and whether any rank has had a notice.

The loop reads them once a report (:meth:`StepFlags.read`), before anything of that report happens
(η's comparison, metrics, a checkpoint): a non-finite step stops every rank at the same report, with no
checkpoint after the last good one, and ``nonfinite.json`` names the first non-finite step and its loss.

Between that step and the report the ranks run on with the optimisers held. What still moves then,
in memory only and never written anywhere: batch norm's running statistics and the EMA bounds' averages
(``log_ema``, updated in the forward pass), η of the closed-form bound (``eta-mine-ema``, set from
that average, not by an optimiser), the RNG streams and the data position.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Flags(NamedTuple):
    """What a report reads: ``nonfinite`` ({"step", "loss"} of the first non-finite step, or None) and
    ``notice`` (some rank has had a preemption notice)."""
    nonfinite: dict | None
    notice: bool


class StepFlags:
    """The run's flags on ``device``; ``optimizers`` (fused Adams, None entries skipped) skip their
    update from the first non-finite step on."""

    def __init__(self, device: torch.device | str, *optimizers: torch.optim.Optimizer | None):
        device = torch.device(device)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        self.first = torch.zeros(2, dtype=torch.float64, device=device)  # step, loss of the first non-finite step
        self.notice = torch.zeros((), dtype=torch.float32, device=device)
        for opt in optimizers:
            if opt is None:
                continue
            if not all(group.get("fused") for group in opt.param_groups):
                raise ValueError(f"{type(opt).__name__} is not fused: only a fused optimiser skips its update "
                                 "on the device's found_inf flag; build it with fused=True")
            opt.found_inf = self.found_inf  # read by Adam.step (the attribute GradScaler sets)

    def update(self, step: int, reduced: torch.Tensor) -> None:
        """Fold in step ``step``: ``reduced`` float [2] on the device, the mean loss over ranks and the
        mean of the ranks' notice flags (0 or 1). In place, before the optimisers step; no host read."""
        loss = reduced[0].double()
        bad = ~torch.isfinite(loss)
        here = torch.stack([torch.full((), step, dtype=torch.float64, device=loss.device), loss])
        self.first.copy_(torch.where(bad & (self.found_inf == 0), here, self.first))
        self.found_inf.copy_(torch.maximum(self.found_inf, bad.float()))  # in place: the optimisers hold it
        self.notice.copy_(torch.maximum(self.notice, (reduced[1] > 0).float()))

    def read(self) -> Flags:
        """The flags on the host: one read of the device."""
        halted, step, loss, notice = torch.cat([self.found_inf.double().reshape(1), self.first,
                                                self.notice.double().reshape(1)]).tolist()
        return Flags({"step": int(step), "loss": loss} if halted else None, notice > 0)
