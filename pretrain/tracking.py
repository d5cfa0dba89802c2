"""Experiment tracking on the driver: TensorBoard's config and hparams, and optional MLflow.

TensorBoard (always, in ``<run dir>/tb``, beside rank 0's curves): the resolved config as text at
the start, and at the end the hparams (the flattened config) with the final metrics (``final/*``,
the last report's values), so runs compare in TensorBoard's HParams tab.

MLflow (with ``track.mlflow_uri``, e.g. ``file:./mlruns``; ``pip install -e .[mlflow]``): one
pretraining run is one MLflow run, named after the run directory: the flattened config as
params, every report's metrics at its step (live, from ``metrics.jsonl``; ``/`` in a name becomes ``_``), and at the end the
resolved config and the exported encoder (``encoder.safetensors``, see :mod:`pretrain.export`) as
artifacts. ``--resume`` continues the same MLflow run (its id is kept in the run directory).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from console.progress import WALL_TIME
from pretrain.run_dir import CONFIG_FILE, TENSORBOARD_DIR

NOT_METRICS = ("step", WALL_TIME)  # the keys of a metrics.jsonl record that are not metrics

MLFLOW_RUN_ID_FILE = "mlflow_run_id"


class TrackingError(RuntimeError):
    """The tracking backend cannot be used; the message is one line naming ``track.mlflow_uri``."""


def flat_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """``{"train.steps": 1000, "model.encoder": "resnet50", ...}``: scalars as they are, the
    rest (None, lists, dicts) as their JSON text."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, Any] = {}

    def walk(prefix: str, node):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
            return
        key = prefix[:-1]
        out[key] = node if isinstance(node, (bool, int, float, str)) else json.dumps(node)

    walk("", plain)
    return out


def final_metrics(metrics_file: Path | str) -> dict[str, float]:
    """The last report's values in ``metrics_file`` (a path or URL) as ``{"final/loss": ..., ...}`` (empty if none)."""
    import storage

    last = None
    if storage.isfile(metrics_file):
        for line in storage.read_text(metrics_file).splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "samples_per_s" in record:
                last = record
    if last is None:
        return {}
    return {f"final/{k}": float(v) for k, v in last.items()
            if isinstance(v, (int, float)) and k not in NOT_METRICS}


def one_record_per_step(metrics_file: Path | str) -> None:
    """Rewrite ``metrics_file`` (a path or URL) with one record per step, the later one, in step order.

    After Ray restarts the workers from a checkpoint, the steps after it run (and are reported) again;
    the later record is the one the run's state carries on from. A line cut short by a crash is
    dropped. The driver calls this once the workers have ended (nothing else writes the file then).
    """
    import storage

    if not storage.isfile(metrics_file):
        return
    lines = storage.read_text(metrics_file).splitlines()
    by_step: dict[int, dict] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            by_step[record["step"]] = record  # a later record of the same step replaces the earlier
    kept = [json.dumps(by_step[s]) for s in sorted(by_step)]
    if kept != lines:
        storage.write_text(metrics_file, "".join(line + "\n" for line in kept))


class Tracking:
    """What the driver tracks for one launch: :meth:`listeners` go to the metrics tail,
    :meth:`finish` closes everything once ``trainer.fit()`` returned (or failed)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, metrics_file: Path | str, checkpoints: Path | str | None = None):
        """``run_dir``: a local directory for the driver's files; ``checkpoints``: the run directory the
        encoder is exported from when it is elsewhere (a bucket URL whose local mirror is ``run_dir``)."""
        self.cfg, self.run_dir, self.metrics_file = cfg, Path(run_dir), metrics_file
        self._write_config_text()
        self.mlflow = MLflowRun(cfg, run_dir, checkpoints) if cfg.track.mlflow_uri else None

    def listeners(self) -> list[Callable[[dict], None]]:
        return [self.mlflow.log_record] if self.mlflow is not None else []

    def finish(self, succeeded: bool, write_hparams: bool = True) -> None:
        """End the tracking; ``write_hparams=False`` after an error no retry fixes (often the run
        directory's disk: TensorBoard's writer thread would print a traceback of its own)."""
        final = final_metrics(self.metrics_file) if write_hparams else {}
        if final:
            self._write_hparams(final)
        if self.mlflow is not None:
            self.mlflow.finish(succeeded)

    def _writer(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))

    def _write_config_text(self) -> None:
        text = OmegaConf.to_yaml(self.cfg, resolve=True)
        with self._writer() as w:
            # four-space indent: a code block in TensorBoard's markdown, so the YAML keeps its layout
            w.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def _write_hparams(self, final: dict[str, float]) -> None:
        with self._writer() as w:
            # run_name=".": the hparams belong to the run's own curves, not to a new sub-run
            w.add_hparams(flat_config(self.cfg), final, run_name=".")


class MLflowRun:
    """One MLflow run for one pretraining run, logged through an explicit client (the metrics
    arrive on the tail's thread, where MLflow's fluent "active run" would not be set)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, checkpoints: Path | str | None = None):
        uri = str(cfg.track.mlflow_uri)
        if uri.startswith("file:"):
            # MLflow 3 keeps file stores in maintenance mode and refuses them unless asked; the
            # user asked by naming one (a database URI such as sqlite:/// needs the full mlflow).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackingError("track.mlflow_uri is set but mlflow is not installed: pip install -e .[mlflow]") from None
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.checkpoints = self.run_dir if checkpoints is None else checkpoints
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self._start(cfg)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the user needs one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"track.mlflow_uri={uri}: cannot start an MLflow run: {first}") from None

    def _start(self, cfg: DictConfig) -> None:
        id_file = self.run_dir / MLFLOW_RUN_ID_FILE
        params = {k: str(v) for k, v in flat_config(cfg).items()}
        if id_file.is_file():  # --resume: the same MLflow run goes on
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            known = self.client.get_run(self.run_id).data.params
            params = {k: v for k, v in params.items() if k not in known}  # MLflow params never change
        else:
            name = cfg.track.mlflow_experiment
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
            self.run_id = self.client.create_run(exp_id, run_name=self.run_dir.name,
                                                 tags={"run_dir": str(self.run_dir)}).info.run_id
            id_file.write_text(self.run_id)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params a call
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_record(self, record: dict) -> None:
        """Every numeric value of one ``metrics.jsonl`` record at its step."""
        from mlflow.entities import Metric

        step, now = int(record.get("step", 0)), int(record.get(WALL_TIME, time.time()) * 1000)
        # "eta" and "eta/rank0" cannot both exist in a file store ("eta" would be file and folder)
        metrics = [Metric(k.replace("/", "_"), float(v), now, step) for k, v in record.items()
                   if k not in NOT_METRICS and isinstance(v, (int, float))]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, succeeded: bool) -> None:
        from pretrain.export import export_encoder

        try:
            self.client.log_artifact(self.run_id, str(self.run_dir / CONFIG_FILE))
            if succeeded:
                with tempfile.TemporaryDirectory(prefix="export-") as tmp:
                    out = Path(tmp) / "encoder.safetensors"
                    export_encoder(self.checkpoints, out)
                    self.client.log_artifact(self.run_id, str(out))
        finally:
            self.client.set_terminated(self.run_id, status="FINISHED" if succeeded else "FAILED")
