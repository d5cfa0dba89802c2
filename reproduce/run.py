"""Running a table's run list: here, one run after another, or as Ray jobs on a cluster. Finished runs and
probes are skipped; a half-finished run continues from its last checkpoint (``python -m pretrain
--resume`` semantics: :func:`pretrain_config` here, :mod:`cluster.resume` in a job)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig

import storage
from cluster import submit as cs
from eval.linear import run_linear_eval
from pretrain.checkpoint import checkpoint_dirs, resolve_checkpoint_file
from pretrain.config import ConfigError, load_config
from pretrain.fatal import RunFailed
from pretrain.preflight import local_ray_on_loopback
from pretrain.run_dir import CONFIG_FILE, experiment_dir, latest_run_dir, step_of
from pretrain.run_lock import RunDirInUse
from pretrain.tracking import TrackingError
from pretrain.train import TrainingStopped, launch
from reproduce.run_list import REPO_ROOT, RunList, PretrainRun, ProbeRun, ReproduceError

# ============================================================================ 3. running it


def pretrain_state(run_list: RunList, run: PretrainRun) -> tuple[str, Path | None]:
    """("done" | "partial" | "new", run directory or None) of a run, from its checkpoints on disk."""
    run_dir = latest_run_dir(run_list.run_root, run.name)
    if run_dir is None:
        return "new", None
    return ("done" if last_step(run_dir) >= run.steps else "partial"), run_dir


def last_step(run_dir) -> int:
    """The step of a run directory's newest checkpoint (0 without one)."""
    dirs = checkpoint_dirs(experiment_dir(run_dir))
    return step_of(dirs[-1]) if dirs else 0


def probe_state(run_list: RunList, probe: ProbeRun) -> str:
    """"done" when the probe's results.json is for the run's final checkpoint and these settings."""
    results = Path(probe.out) / "results.json"
    state, run_dir = pretrain_state(run_list, run_list.run(probe.run_name))
    if state != "done" or not results.is_file():
        return "to run"

    res = json.loads(results.read_text())
    same = (res.get("checkpoint") == str(resolve_checkpoint_file(run_dir).resolve())
            and res.get("seeds") == list(range(probe.probe_seeds)) and res.get("epochs") == probe.epochs)
    return "done" if same else "to run"


def refresh_status(run_list: RunList) -> None:
    for run in run_list.runs:
        state, run_dir = pretrain_state(run_list, run)
        if state == "partial":
            run.status = f"partial (step {last_step(run_dir)} of {run.steps})"
        else:
            run.status = {"done": "done", "new": "to run"}[state]
    for probe in run_list.probes:
        probe.status = probe_state(run_list, probe)


def pretrain_config(run_list: RunList, run: PretrainRun) -> tuple[DictConfig, Path | None]:
    """(config, run directory to continue or None): a run that exists continues from its saved
    config.yaml with the run list's overrides (as ``python -m pretrain --resume`` does), else it starts
    from its YAML."""
    _, run_dir = pretrain_state(run_list, run)
    source = REPO_ROOT / run.config if run_dir is None else run_dir / CONFIG_FILE
    return load_config(source, run.overrides), run_dir


def run_locally(run_list: RunList) -> None:
    """Every pretraining run, then every probe, one after another in this process."""
    local_ray_on_loopback()  # before anything imports ray
    for run in run_list.runs:
        state, _ = pretrain_state(run_list, run)
        if state == "done":
            print(f"[skip] {run.name}: finished", flush=True)
            continue
        cfg, run_dir = pretrain_config(run_list, run)
        print(f"[pretrain] {run.name} ({run.steps} steps{f', continuing {run_dir}' if run_dir else ''})", flush=True)
        try:
            launch(cfg, run_dir=run_dir)
        except (ConfigError, TrainingStopped, RunFailed, RunDirInUse, TrackingError, storage.StorageError) as exc:
            raise ReproduceError(f"pretraining {run.name} failed: {exc}; fix it and re-run the same command: "
                                 f"finished runs are skipped, this one continues from its checkpoint") from exc
    for probe in run_list.probes:
        if probe_state(run_list, probe) == "done":
            print(f"[skip] probe of {probe.run_name} on {probe.dataset}: finished", flush=True)
            continue
        _, run_dir = pretrain_state(run_list, run_list.run(probe.run_name))
        print(f"[probe] {probe.run_name} on {probe.dataset} ({probe.probe_seeds} seeds)", flush=True)
        run_linear_eval(str(run_dir), probe.data, epochs=probe.epochs, seeds=probe.probe_seeds, out=probe.out,
                        cache_dir=str(Path(run_list.out) / "feature_cache"), use_ray=False)


def cluster_gpus(address: str) -> int:
    """GPUs of the Ray cluster behind the job API ``address`` (its state API)."""
    from ray.util.state import list_nodes  # Ray's state API: only a cluster run needs it

    nodes = list_nodes(address=cs.normalise_address(address), filters=[("state", "=", "ALIVE")])
    return int(sum(n.resources_total.get("GPU", 0) for n in nodes))


def probe_entrypoint(run_list: RunList, probe: ProbeRun, run_dir: Path) -> str:
    """The ``python -m eval.linear`` job command of a probe (through ``cluster.submit.eval_job``)."""
    return cs.eval_job([f"checkpoint={run_dir}", f"data={probe.data}", f"epochs={probe.epochs}",
                        f"seeds={probe.probe_seeds}", f"out={probe.out}", f"cache_dir={Path(run_list.out) / 'feature_cache'}"])


def run_on_cluster(run_list: RunList, address: str, gpus: int | None = None, poll_s: float = 10.0) -> None:
    """Submit the runs as Ray jobs, as many at once as the cluster's GPUs hold; each probe once its
    run has finished. ``--out`` and ``--data-root`` must be on storage every node and this machine mount."""
    client = cs.connect(address)
    env = cs.runtime_env(REPO_ROOT)
    try:
        reported = cluster_gpus(address)
    except Exception as exc:  # the state API is unreachable or refuses: say so in one line
        raise ReproduceError(f"cannot read the GPUs of {address} ({' '.join(str(exc).split())[:200]})") from None
    gpus = gpus or reported
    if gpus < 1:
        raise ReproduceError(f"the cluster at {address} reports no GPU; pass --gpus N to run N jobs at once on its CPUs")
    probe_gpus = 1 if reported else 0  # a probe job asks for a GPU only where there are GPUs
    queue: list[tuple[str, object]] = [("pretrain", r) for r in run_list.runs if pretrain_state(run_list, r)[0] != "done"]
    queue += [("probe", p) for p in run_list.probes if probe_state(run_list, p) != "done"]
    running: dict[str, tuple[str, object, int]] = {}  # job id -> (stage, item, GPUs)
    finished: set[str] = {r.name for r in run_list.runs if pretrain_state(run_list, r)[0] == "done"}
    failed: list[str] = []
    while queue or running:
        free = gpus - sum(g for _, _, g in running.values())
        for stage, item in list(queue):
            if stage == "probe" and item.run_name not in finished:
                if item.run_name in failed:
                    queue.remove((stage, item))
                continue
            need = item.workers if stage == "pretrain" else 1  # a CPU-only cluster: --gpus counts job slots
            if need > free:
                continue
            if stage == "pretrain":
                entrypoint, run_name, _ = cs.pretrain_job(REPO_ROOT / item.config, item.overrides, REPO_ROOT)
                job = cs.submit(client, entrypoint, env, stage="pretrain", run_name=run_name)
            else:
                _, run_dir = pretrain_state(run_list, run_list.run(item.run_name))
                job = cs.submit(client, probe_entrypoint(run_list, item, run_dir), env, stage="eval",
                                entrypoint_gpus=probe_gpus)
            print(f"[job {job}] {stage} {getattr(item, 'name', None) or f'{item.run_name} on {item.dataset}'}", flush=True)
            running[job] = (stage, item, need)
            queue.remove((stage, item))
            free -= need
        time.sleep(poll_s)
        for job, (stage, item, _) in list(running.items()):
            status = str(client.get_job_status(job))
            if status not in cs.TERMINAL:
                continue
            del running[job]
            name = item.name if stage == "pretrain" else f"{item.run_name} on {item.dataset}"
            if status == "SUCCEEDED":
                if stage == "pretrain":
                    finished.add(item.name)
            else:
                failed.append(item.name if stage == "pretrain" else name)
                print(f"[job {job}] {stage} {name}: {status} (python -m cluster.submit logs {job})", flush=True)
    if failed:
        raise ReproduceError(f"{len(failed)} job(s) failed: {', '.join(failed)}; re-run the same command to "
                             f"retry them (finished runs are skipped, started ones continue)")


