"""Mutual-information bounds as pure functions of critic scores, with a registry by name.

    est = build("eta-mine")
    loss, mi = est(scores, pos_mask)     # scores [N, M] critic values f(x_i, y_j)

Each bound lives in its own file; ``eta_mine_convex`` fits a linear witness on fixed features;
``evaluate`` reads a bound on several batches and returns the estimate with a bootstrap interval.
"""
# Import order is registration order, which names() reports.
from . import eta_mine, dv_mine, f_mine, a_mine, infonce, jsd, smile  # noqa: F401,I001
from .base import MIEstimate, masks_checked
from .eta_mine import EtaMINE, eta_step
from .interval import Interval, bootstrap_interval, evaluate, read_out
from .registry import Capabilities, build, capabilities, names, register

__all__ = ["Capabilities", "MIEstimate", "EtaMINE", "Interval", "bootstrap_interval", "eta_step", "evaluate", "build",
           "capabilities", "masks_checked", "names", "read_out", "register"]
