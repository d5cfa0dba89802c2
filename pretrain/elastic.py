"""Elastic runs on Ray Train V2: the worker count follows the cluster, always a divisor of V.

With ``train.min_workers`` set, the run asks Ray Train for ``ScalingConfig(num_workers=(min, max))``.
Ray's elastic policy (``ray.train.v2._internal.execution.scaling_policy.elastic``) counts the workers
the reserved resources hold and starts (or, every ``train.resize_every_s`` while the group runs, resizes
to) that many; :class:`DivisorScalingPolicy` rounds that count down to the largest divisor of the run's
virtual shards, so every worker runs V/W whole micro-batches. After a node loss the group fails, Ray
restarts it from the last checkpoint on the workers left; when nodes return its resize check grows it
back (a restart from the last checkpoint too). Either way the weights do not depend on W
(:mod:`pretrain.virtual_shards`). The policy counts against the nodes Ray's GCS holds at the moment of
each decision, and keeps the reservation under the run's name, so that a ``--resume`` after a killed
driver is not kept waiting by the dead launch's reservation.

Every run's workers get :func:`pretrain.interrupt.install_worker_sigterm` on their main thread as the
group starts (:class:`SigtermAsNotice`), so a SIGTERM to a worker is a preemption notice rather than
Ray's immediate exit.
"""
from __future__ import annotations

import logging

import ray
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy
from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
    AUTOSCALING_REQUESTS_GET_TIMEOUT_S,
    TrainAutoscalingCoordinatorClient,
)
from ray.train.v2._internal.util import time_monotonic

from pretrain import interrupt
from pretrain.virtual_shards import divisors

logger = logging.getLogger(__name__)


def largest_divisor(virtual_shards: int, at_most: int) -> int:
    """The largest worker count ``<= at_most`` that divides ``virtual_shards`` (0 when ``at_most < 1``)."""
    return max((d for d in divisors(virtual_shards) if d <= at_most), default=0)


class DivisorScalingPolicy(ElasticScalingPolicy):
    """Ray Train's elastic policy, counting only worker group sizes that divide ``virtual_shards``."""

    def __init__(self, scaling_config, virtual_shards: int):
        super().__init__(scaling_config)
        self.virtual_shards = virtual_shards

    def _count_possible_workers(self, reserved_resources) -> int:
        return largest_divisor(self.virtual_shards, super()._count_possible_workers(reserved_resources))

    def after_controller_start(self, train_run_context) -> None:
        """Reserve the cluster's workers under the run's name (its directory's), not Ray's per-launch id.

        Ray's coordinator holds a launch's reservation until the launch cancels it or 180 s pass. A
        driver killed mid-run cancels nothing, so its ``--resume`` would find every worker reserved to
        the dead launch and wait those 180 s; under the run's name the resumed launch takes the dead
        one's reservation over."""
        self._requester_id = f"train-{train_run_context.run_config.name or train_run_context.run_id}"
        self._coordinator_client = TrainAutoscalingCoordinatorClient(self._requester_id)
        self._send_resource_request()

    def _get_reserved_resources(self):
        """The workers' reservation against the cluster as Ray's GCS holds it now (``recompute=True``).

        Ray's coordinator refreshes its view of the nodes every 20 s; without the recompute a lost node
        counts as alive, and a returned one as absent, for up to 20 s more than the GCS says. Ray's own
        policy asks at most once a second; so does this (a recompute lists the nodes once)."""
        now = time_monotonic()
        if now - self._latest_reserved_resources_query_time < self.GET_RESERVED_RESOURCES_INTERVAL_S:
            return self._latest_reserved_resources
        reserved = None
        try:
            reserved = ray.get(self._autoscaling_coordinator.get_reserved_resources.remote(self._requester_id,
                                                                                            recompute=True),
                               timeout=AUTOSCALING_REQUESTS_GET_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - as Ray's policy: no reservation this time, no resize
            logger.warning("could not read the workers' reservation from Ray's autoscaling coordinator; "
                           "not resizing this time", exc_info=True)
        finally:
            self._latest_reserved_resources_query_time = time_monotonic()
            self._latest_reserved_resources = reserved
        return reserved


class SigtermAsNotice(WorkerGroupCallback):
    """Ray Train controller callback: once a worker group's actors are up and before the training
    function starts, each worker installs the SIGTERM handler of :mod:`pretrain.interrupt`. The call goes
    through the worker actor's ``execute`` method, which (a non-threaded actor) runs on the process's
    main thread, the only one that may set a signal handler; Ray installed its own before the first
    actor task, so ours replaces it and chains to it."""

    def after_worker_group_start(self, worker_group) -> None:
        worker_group.execute(interrupt.install_worker_sigterm)


class ShardTrainer(TorchTrainer):
    """A ``TorchTrainer`` whose elastic runs resize by :class:`DivisorScalingPolicy` (fixed runs: Ray's
    own policy) and whose workers take SIGTERM as a preemption notice (:class:`SigtermAsNotice`).
    ``virtual_shards``: the run's V.

    It leaves out Ray Data's callback: the workers read their shards themselves and the trainer is given
    no Ray Dataset, yet that callback starts a dataset-manager actor (a Python process of its own, about
    1.3 CPU-seconds) at every worker group start, the first and each restart or resize."""

    def __init__(self, *args, virtual_shards: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.virtual_shards = virtual_shards

    def _create_default_callbacks(self):
        kept = [c for c in super()._create_default_callbacks() if not isinstance(c, DatasetsCallback)]
        return [*kept, SigtermAsNotice()]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        if isinstance(controller_init_kwargs.get("scaling_policy"), ElasticScalingPolicy):
            controller_init_kwargs["scaling_policy"] = DivisorScalingPolicy(self.scaling_config, self.virtual_shards)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
