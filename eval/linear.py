"""Linear-probe evaluation of pretrained checkpoints (the paper's target task), plus a kNN read.

    python -m eval.linear checkpoint=runs/infomax-eta-cifar10-... data=data/shards/cifar10 epochs=200 seeds=2

Reads top to bottom: load the frozen encoder (`weights_only=True`), extract train and test features
once (cached on disk, keyed by checkpoint and dataset), check that no encoder tensor changed, train
one linear classifier per seed on the cached features (`protocol=paper`: Adam 0.9/0.999, lr 1e-4, no
weight decay, as Appendix D; `protocol=sweep`: a grid of heads in one pass, the best on a held-out
share of the train split), score top-1/5/10 on the test split, run a faiss weighted kNN (k = 10, 20,
100, 200 from one search) on the same features, check the encoder again, and write `results.json`,
`results.md` and TensorBoard curves.

Several checkpoints, and the seeds of each, run as parallel Ray tasks when a Ray cluster is there
(`ray_address=`, `RAY_ADDRESS`, or `ray.init` already called from Python); otherwise in this process.
Settings: the defaults of :class:`LinearConfig`, then an optional `--config` YAML, then `key=value`
arguments (as for `python -m pretrain`; `--help` lists every key with its default).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

import storage
from eval.config import LinearConfig, extraction_settings, load_linear_config
from eval.features import cached_features, kind_of
from eval.knn import knn_accuracy
from eval.probe import check_probe_memory, train_linear_probe
from eval.sweep import score_head, sweep_grid, train_sweep
from pretrain.config import ConfigError, defaults_help
from pretrain.preflight import request_bundles
from pretrain.run_dir import TENSORBOARD_DIR, run_dir_of

KS = (1, 5, 10)


# ----------------------------------------------------------------------------- frozen-encoder check


def encoder_state_snapshot(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of every encoder tensor (parameters and buffers, e.g. BN running stats)."""
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}


def verify_encoder_unchanged(encoder: nn.Module, reference: Mapping[str, torch.Tensor]) -> None:
    """Raise `RuntimeError` naming the first encoder tensor that differs from `reference`.

    `reference` is the checkpoint's `encoder` state dict (or a snapshot taken right after loading).
    Compares every parameter and buffer bit for bit, as MoCo v3's `sanity_check` does after its probe.
    """
    state = encoder.state_dict()
    if set(state) != set(reference):
        extra, missing = sorted(set(state) - set(reference)), sorted(set(reference) - set(state))
        raise RuntimeError(f"frozen encoder check failed: tensor names differ from the checkpoint (extra {extra[:3]}, missing {missing[:3]})")
    for name, ref in reference.items():
        now = state[name].detach().cpu()
        if now.shape != ref.shape or not torch.equal(now, ref.cpu()):
            raise RuntimeError(f"frozen encoder check failed: encoder tensor {name!r} changed during evaluation")


def reinitialise(encoder: nn.Module, seed: int) -> nn.Module:
    """Give the encoder fresh random weights (each layer's own `reset_parameters`, seeded), in place.

    The baseline "randomly initialised encoder of the same architecture".
    """
    torch.manual_seed(seed)
    for module in encoder.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    return encoder.eval()


# ----------------------------------------------------------------------------- datasets and metadata


def default_splits(manifest: dict, train_split: str | None, test_split: str | None) -> tuple[str, str]:
    """(train, test) split names: `train` and then `test` or else `val`, unless given."""
    splits = list(manifest["splits"])
    train = train_split or "train"
    test = test_split or next((s for s in ("test", "val") if s in splits), None)
    for role, name in (("train", train), ("test", test)):
        if name is None or name not in splits:
            raise ValueError(
                f"{manifest['dataset']} shards have no {role} split {name!r}; available: {', '.join(splits)} "
                f"(choose with {role}_split=NAME)"
            )
        if not manifest["splits"][name].get("labelled", True):
            raise ValueError(f"split {name!r} of {manifest['dataset']} has no labels; a probe needs a labelled {role} split")
    if not manifest["class_names"]:
        raise ValueError(f"{manifest['dataset']} shards have no classes; a probe needs labels")
    return train, test


def describe_pretraining(config: dict) -> dict:
    """What the checkpoint was pretrained with: task, estimator, encoder, run seed, the global batch
    (images a step over all ranks), the dataset's name and the size of the split it read (when its shard
    manifest is readable from here; else the shard directory's name and no size)."""
    from data_prep.manifest import ManifestError, read_manifest

    task, model, data = config.get("task") or {}, config.get("model") or {}, config.get("data") or {}
    train, run = config.get("train") or {}, config.get("run") or {}
    shards = data.get("shards")
    dataset = source = num_samples = None
    if shards:
        try:
            m = read_manifest(shards)
            dataset, source = m["dataset"], m.get("source")
            num_samples = (m["splits"].get(data.get("split", "train")) or {}).get("num_samples")
        except (ManifestError, storage.StorageError):
            dataset = storage.basename(shards)
    per_rank = data.get("images_per_batch") if str(task.get("kind", "")).startswith("jigsaw") else data.get("batch_size")
    return {
        "task": task.get("kind"),
        "estimator": task.get("estimator"),
        "encoder": model.get("encoder"),
        "depth": model.get("depth"),
        "seed": run.get("seed"),
        # a step is data.virtual_shards micro-batches (null: train.num_workers), whatever the workers
        "global_batch": (per_rank * int(data.get("virtual_shards") or train.get("num_workers", 1))
                         if per_rank is not None else None),
        "dataset": dataset,
        "dataset_source": source,
        "num_samples": num_samples,
        "shards": shards,
    }


def _checkpoint_name(file: Path | str, step: int) -> str:
    """A readable name for a checkpoint file (a path or URL): `<run dir>-step<step>`."""
    from pretrain.checkpoint import step_of

    folder = storage.parent(file)
    run = storage.basename(storage.parent(folder) if step_of(folder) is not None else folder)
    return f"{run}-step{step}"


# ----------------------------------------------------------------------------- phase 1: features


def prepare_features(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    *,
    random_init: bool = False,
    random_init_seed: int = 0,
    train_split: str | None = None,
    test_split: str | None = None,
    cache_dir: str | os.PathLike | None = LinearConfig.cache_dir,
    batch_size: int | None = LinearConfig.extract_batch_size,
    num_workers: int | None = LinearConfig.num_workers,
    device: str | None = None,
    progress: bool = True,
    keep_encoder: bool = False,
    probe_heads: int = 1,
) -> dict:
    """Load the frozen encoder, get train/test features (cache or extraction) and check the encoder.

    Returns {"meta": dict, "train": (features [N, D], labels [N]), "test": (features [Q, D], labels [Q])},
    plus "encoder" and "reference" (its checkpoint state) when `keep_encoder`.
    Raises `FileNotFoundError`/`ValueError` with one line for a wrong path, a corrupt checkpoint, an
    encoder of another architecture, or unusable shards; `MemoryError` (one line) before extracting
    when `probe_heads` probes of the dataset's classes would not fit in memory.
    """
    from data_prep.manifest import read_manifest
    from pretrain.checkpoint import encoder_from_payload, load_checkpoint, resolve_checkpoint_file

    file = resolve_checkpoint_file(checkpoint)
    payload = load_checkpoint(file)  # read once: the encoder and the reference tensors both come from it
    encoder, config = encoder_from_payload(payload)
    reference = {k: v.detach().cpu() for k, v in payload["encoder"].items()}
    step, sha = int(payload["step"]), payload["sha256"]
    del payload
    variant = ""
    if random_init:
        reinitialise(encoder, random_init_seed)
        reference = encoder_state_snapshot(encoder)
        variant = f"random-init-seed{random_init_seed}"
    kind = kind_of(config)
    manifest = read_manifest(data)
    train_split, test_split = default_splits(manifest, train_split, test_split)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_probe_memory(encoder.feature_dim, len(manifest["class_names"]), int(manifest["splits"][test_split]["num_samples"]),
                       dev, heads=probe_heads)
    encoder.to(dev).eval().requires_grad_(False)
    if dev.type == "cuda":  # NHWC convolutions are faster on GPUs; the features stay fp32 (cache-compatible)
        encoder.to(memory_format=torch.channels_last)
    batch_size, num_workers = extraction_settings(batch_size, num_workers, on_gpu=dev.type == "cuda")
    size = int((config.get("data") or {}).get("size") or 32)
    common = dict(checkpoint_sha256=sha, shard_dir=data, manifest=manifest, kind=kind, cache_dir=cache_dir, variant=variant, size=size,
                  batch_size=batch_size, num_workers=num_workers, device=dev, progress=progress)
    t0 = time.perf_counter()
    train = cached_features(encoder, split=train_split, **common)
    test = cached_features(encoder, split=test_split, **common)
    seconds = time.perf_counter() - t0
    verify_encoder_unchanged(encoder, reference)
    meta = {
        "checkpoint": storage.resolve(file),
        "checkpoint_name": _checkpoint_name(file, step) + ("-random-init" if random_init else ""),
        "checkpoint_sha256": sha,
        "step": step,
        "random_init": random_init,
        "run_dir": run_dir_of(file, config),
        "pretraining": describe_pretraining(config),
        "kind": kind,
        "dataset": manifest["dataset"],
        "dataset_source": manifest.get("source"),
        "data": storage.resolve(data),
        "train_split": train_split,
        "test_split": test_split,
        "num_train": int(train["labels"].numel()),
        "num_test": int(test["labels"].numel()),
        "num_classes": len(manifest["class_names"]),
        "feature_dim": int(train["features"].shape[1]),
        "feature_cache": {"train": train["cache_path"], "test": test["cache_path"], "hit": train["cache_hit"] and test["cache_hit"]},
        "skipped": {"train": train["skipped"], "test": test["skipped"]},
        "feature_seconds": seconds,
    }
    out = {"meta": meta, "train": (train["features"], train["labels"]), "test": (test["features"], test["labels"])}
    if keep_encoder:
        out["encoder"], out["reference"] = encoder, reference
    return out


# ----------------------------------------------------------------------------- phase 2: probes and kNN


def probe_one_seed(features: dict, seed: int, *, epochs: int, lr: float, batch_size: int, tb_dir: str | None = None,
                   device: str | None = None, progress: bool = True, protocol: str = "paper", sweep: dict | None = None) -> dict:
    """Train and score the linear probe of one seed on prepared features (see `prepare_features`).

    protocol "paper": `eval.probe.train_linear_probe` (one head, Adam `lr`, scored after the last
    epoch). protocol "sweep": `eval.sweep.train_sweep` with `sweep` = {"grid", "holdout_share",
    "holdout_seed"}: the head chosen on the held-out share of the train split, then the test split
    scored once, for that head only. Writes TensorBoard curves per epoch to `tb_dir` if given.
    Returns {"seed", "epochs", "top1", "top5", "top10", "history": {tag: [per epoch]}} and, for the
    sweep, "chosen" (the head's name), "heads" (every head with its held-out top-1) and "holdout".
    """
    writer = None
    if tb_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tb_dir)
    try:
        (x, y), (xt, yt) = features["train"], features["test"]
        num_classes = features["meta"]["num_classes"]
        if protocol == "sweep":
            res = train_sweep(x, y, num_classes, sweep["grid"], epochs=epochs, seed=seed, holdout_share=sweep["holdout_share"],
                              holdout_seed=sweep["holdout_seed"], batch_size=batch_size, device=device, writer=writer,
                              progress=progress, desc=f"sweep seed {seed}")
            acc = score_head(res, res["chosen"], xt, yt, KS)  # the one read of the test split
            history = {f"sweep/heldout_top1/{h['name']}": [epoch[i] for epoch in res["history"]["heldout_top1"]]
                       for i, h in enumerate(res["heads"])}
            return {"seed": seed, "epochs": epochs, **{f"top{k}": acc[k] for k in KS}, "chosen": res["heads"][res["chosen"]]["name"],
                    "heads": res["heads"], "holdout": res["holdout"], "history": history}
        res = train_linear_probe(x, y, xt, yt, num_classes, epochs=epochs, seed=seed, lr=lr,
                                 batch_size=batch_size, ks=KS, device=device, writer=writer, progress=progress,
                                 desc=f"probe seed {seed}")
        res["history"] = {"probe/train_loss": res["history"]["train_loss"], "probe/test_top1": res["history"]["test_top1"]}
        return res
    finally:
        if writer is not None:
            writer.close()


def mean_std(values: Sequence[float]) -> dict:
    """{"mean", "std"} of per-seed values; std is the sample std (ddof 1), 0 for a single seed."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def summarise(meta: dict, per_seed: list[dict], knn: dict, *, epochs: int, lr: float, batch_size: int,
              protocol: str = "paper", sweep: dict | None = None) -> dict:
    """The results record written to results.json. For protocol "sweep" it also records the grid, the
    held-out share, every seed's chosen head and every head's held-out top-1 (in "per_seed")."""
    per_seed = sorted(per_seed, key=lambda r: r["seed"])
    protocol_record = {"protocol": protocol}
    if protocol == "sweep":
        protocol_record["sweep"] = {"grid": sweep["grid"], "holdout": per_seed[0]["holdout"],
                                    "chosen": [r["chosen"] for r in per_seed]}
    return {
        **{k: meta[k] for k in ("checkpoint", "checkpoint_name", "step", "random_init", "run_dir", "pretraining", "dataset", "dataset_source", "data",
                                "train_split", "test_split", "num_train", "num_test", "num_classes", "feature_dim", "kind")},
        **protocol_record,
        "epochs": epochs,
        "seeds": [r["seed"] for r in per_seed],
        "lr": lr if protocol == "paper" else None,
        "batch_size": batch_size,
        **{f"top{k}": mean_std([r[f"top{k}"] for r in per_seed]) for k in KS},
        "per_seed": [{k: v for k, v in r.items() if k != "history"} for r in per_seed],
        "knn": knn,
        "encoder_unchanged": True,
        "feature_cache": meta["feature_cache"],
        "skipped": meta["skipped"],
        "feature_seconds": meta["feature_seconds"],
    }


def results_markdown(res: dict) -> str:
    """results.md: one small table for one checkpoint on one dataset."""
    pre = res["pretraining"]
    top10 = "—" if res["num_classes"] <= 10 else f"{res['top10']['mean']:.2f} ± {res['top10']['std']:.2f}"  # 100 by definition
    by_k = ", ".join(f"{k}: {v['top1']:.2f}" for k, v in (res["knn"].get("by_k") or {}).items())
    f = lambda m: f"{m['mean']:.2f} ± {m['std']:.2f}"  # noqa: E731
    if res.get("protocol") == "sweep":
        sw = res["sweep"]
        probe = (f"sweep of {len(sw['grid'])} heads, chosen on {sw['holdout']['num_heldout']} held-out train samples "
                 f"(share {sw['holdout']['share']}, seed {sw['holdout']['seed']}): {', '.join(sw['chosen'])}")
    else:
        probe = f"Adam lr {res['lr']}"
    lines = [
        f"# Linear probe: {res['checkpoint_name']} on {res['dataset']}",
        "",
        f"- checkpoint: `{res['checkpoint']}` (step {res['step']}{', random init' if res['random_init'] else ''})",
        f"- pretraining: {pre['task']} / {pre['estimator'] or '-'} / {pre['encoder']} on {pre['dataset']}",
        f"- probe: {res['train_split']} ({res['num_train']}) → {res['test_split']} ({res['num_test']}), "
        f"{res['num_classes']} classes, {res['feature_dim']}-d features, {res['epochs']} epochs, "
        f"{probe}, batch {res['batch_size']}, seeds {res['seeds']}",
        "",
        "| top-1 | top-5 | top-10 | kNN top-1 | kNN top-5 |",
        "| --- | --- | --- | --- | --- |",
        f"| {f(res['top1'])} | {f(res['top5'])} | {top10} | {res['knn']['top1']:.2f} | {res['knn']['top5']:.2f} |",
        "",
        f"Accuracies in %, mean ± std over seeds; kNN: cosine, k = {res['knn']['k']}, T = {res['knn']['temperature']}"
        + (f"; kNN top-1 at k = {by_k}" if by_k else "") + ".",
        "The frozen encoder was checked unchanged (every tensor) after evaluation.",
        "",
    ]
    return "\n".join(lines)


def write_results(out: str | os.PathLike, res: dict) -> None:
    """Write `out/results.json` and `out/results.md`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "results.md").write_text(results_markdown(res))


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one probe seed (seeds=N with N >= 1)")
    return seeds


def probe_to_run_tensorboard(res: dict) -> str | None:
    """Put the probe's result next to the pretraining run's curves, in ``<run dir>/tb/probe-<dataset>[-random-init]``:
    top-1/5 and kNN top-1 at the checkpoint's pretraining step (several checkpoints make a curve). The
    per-epoch probe curves live once, in the results directory (``OUT/tb``). Returns that directory
    (None when the checkpoint is not in a run directory or the run directory is not writable)."""
    from torch.utils.tensorboard import SummaryWriter

    if not res.get("run_dir"):
        return None
    tb = Path(res["run_dir"]) / TENSORBOARD_DIR / (f"probe-{res['dataset']}" + ("-random-init" if res["random_init"] else ""))
    try:
        with SummaryWriter(str(tb)) as w:
            for k in KS[:2]:
                w.add_scalar(f"probe/top{k}", res[f"top{k}"]["mean"], res["step"])
            w.add_scalar("probe/knn_top1", res["knn"]["top1"], res["step"])
    except OSError as exc:  # a read-only run directory (shared storage): the results directory has the curves
        print(f"note: probe results not written next to the run ({tb}): {exc}", file=sys.stderr)
        return None
    return str(tb)


def _history_to_tensorboard(tb_dir: str, history: dict) -> None:
    """Per-epoch curves {tag: [value per epoch]} (a Ray task's, sent back) to `tb_dir`."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tb_dir) as w:
        for tag, values in history.items():
            for epoch, value in enumerate(values, start=1):
                w.add_scalar(tag, value, epoch)


# ----------------------------------------------------------------------------- entry points


def run_linear_eval(checkpoint: str | os.PathLike, data: str | os.PathLike, **settings) -> dict:
    """Evaluate one checkpoint on one shard directory; write results to `out` and return them.

    `settings` are fields of :class:`LinearConfig` (epochs, seeds, out, lr, ...; seeds may also be a
    list of seeds) plus `use_ray`. Returns the results.json record (top1/top5/top10 as
    {"mean", "std"} in %, "knn": {"top1", "top5"}).
    """
    return evaluate_checkpoints([checkpoint], data, **settings)[0]


def evaluate_checkpoints(checkpoints: Sequence[str | os.PathLike], data: str | os.PathLike, *,
                         use_ray: bool | None = None, **settings) -> list[dict]:
    """Evaluate several checkpoints on one dataset; one results directory each.

    `settings` are fields of :class:`LinearConfig` (an unknown one is a `TypeError` naming it).
    With one checkpoint its results go to `out` itself; with several, to `out/<checkpoint name>/`.
    `out=None` means `runs/eval/<checkpoint name>-<dataset>`. `use_ray=None` uses Ray when
    `ray_address` is given, `RAY_ADDRESS` is set, or Ray is already initialised: feature extraction
    runs as one task per checkpoint and the probe as one task per (checkpoint, seed).
    """
    return evaluate(LinearConfig(checkpoint=[str(c) for c in checkpoints], data=str(data), **settings), use_ray=use_ray)


def evaluate(cfg: LinearConfig, use_ray: bool | None = None) -> list[dict]:
    """Run the evaluation `cfg` describes (see :func:`evaluate_checkpoints`); returns one results record per checkpoint."""
    seed_list = _seed_list(cfg.seeds)
    # Ray tasks run in another working directory: resolve local paths where they were given.
    checkpoints = [storage.resolve(c) for c in cfg.checkpoint]  # URLs stay URLs
    data = storage.resolve(cfg.data)
    if cfg.cache_dir is not None and storage.is_url(cfg.cache_dir):
        raise ValueError(f"cache_dir={cfg.cache_dir}: give a local directory (the feature cache is read back "
                         f"at random; checkpoints, shards and out may be URLs)")
    cache_dir = None if cfg.cache_dir is None else os.path.abspath(cfg.cache_dir)
    # results for a URL are written to a local mirror and uploaded at the end
    mirror = storage.LocalMirror(storage.resolve(cfg.out)) if cfg.out is not None and storage.is_url(cfg.out) else None
    out, progress = (mirror.dir if mirror else cfg.out), cfg.progress
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    check_output_dir(out)
    if cache_dir is not None and not _writable(cache_dir):
        cache_dir = None
    sweep = None
    if cfg.protocol == "sweep":
        sweep = {"grid": sweep_grid(cfg.sweep_lrs, cfg.sweep_weight_decays, cfg.sweep_batchnorm),
                 "holdout_share": cfg.holdout_share, "holdout_seed": cfg.holdout_seed}
    prep_kw = dict(random_init=cfg.random_init, train_split=cfg.train_split, test_split=cfg.test_split, cache_dir=cache_dir,
                   batch_size=cfg.extract_batch_size, num_workers=cfg.num_workers, device=cfg.device,
                   probe_heads=len(sweep["grid"]) if sweep else 1)
    probe_kw = dict(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, device=cfg.device, protocol=cfg.protocol, sweep=sweep)
    if use_ray is None:
        use_ray = cfg.ray_address is not None or "RAY_ADDRESS" in os.environ or _ray_initialised()
    t0 = time.perf_counter()
    if use_ray:
        prepared, probes = _run_on_ray(checkpoints, data, seed_list, prep_kw, probe_kw, cfg.ray_address, progress,
                                       cfg.resource_wait_s)
    else:
        prepared, probes = [], []
        for ckpt in checkpoints:
            feats = prepare_features(ckpt, data, progress=progress, keep_encoder=True, **prep_kw)
            prepared.append(feats)
            tb = _out_dir(out, feats["meta"], several=len(checkpoints) > 1) / "tb"  # live curves while it trains
            probes.append([probe_one_seed(feats, s, progress=progress, tb_dir=str(tb / f"seed{s}"), **probe_kw) for s in seed_list])
            for r in probes[-1]:
                r["history_written"] = True
            # The probe trains on cached features only; check again anyway, as after any probe.
            verify_encoder_unchanged(feats.pop("encoder"), feats.pop("reference"))
    results = []
    for feats, per_seed in zip(prepared, probes):
        meta = feats["meta"]
        res_dir = _out_dir(out, meta, several=len(checkpoints) > 1)
        for r in per_seed:  # Ray tasks send their curves back; write them here
            if not r.pop("history_written", False):
                _history_to_tensorboard(str(res_dir / "tb" / f"seed{r['seed']}"), r["history"])
        (x, y), (xt, yt) = feats["train"], feats["test"]
        knn = knn_accuracy(x, y, xt, yt, meta["num_classes"], k=cfg.knn_k, temperature=cfg.knn_temperature, ks=cfg.knn_ks)
        res = summarise(meta, per_seed, knn, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, protocol=cfg.protocol, sweep=sweep)
        res["wall_seconds"] = time.perf_counter() - t0
        res["out"] = str(res_dir)
        if mirror is not None:
            rel = os.path.relpath(res_dir, mirror.dir)
            res["out"] = mirror.path if rel == "." else storage.join(mirror.path, rel)
        res["run_tensorboard"] = probe_to_run_tensorboard(res)
        write_results(res_dir, res)
        results.append(res)
    if mirror is not None:
        mirror.push()
    return results


def check_output_dir(out) -> None:
    """Before any work: the results directory must be writable (`NotWritableError`, one line)."""
    from storage.writable import check_writable_dir

    check_writable_dir(Path("runs") / "eval" if out is None else out, "out", "choose another with out=DIR")


def _writable(cache_dir) -> bool:
    """An unwritable feature cache only costs time: warn and evaluate without it."""
    from storage.writable import NotWritableError, check_writable_dir

    try:
        check_writable_dir(cache_dir, "cache_dir")
    except NotWritableError as exc:
        print(f"warning: {exc}; evaluating without the feature cache", file=sys.stderr)
        return False
    return True


def _out_dir(out, meta: dict, several: bool) -> Path:
    name = f"{meta['checkpoint_name']}-{meta['dataset']}"
    if out is None:
        return Path("runs") / "eval" / name
    return Path(out) / name if several else Path(out)


def _ray_initialised() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return ray.is_initialized()


def _run_on_ray(checkpoints, data, seed_list, prep_kw, probe_kw, ray_address, progress,
                resource_wait_s: float = 0.0) -> tuple[list, list]:
    """Extraction tasks (one per checkpoint, a GPU each when the cluster has or grows GPUs), then probe
    tasks (one per checkpoint and seed) on the features passed through the object store."""
    import ray
    from console.progress import bar as progress_bar

    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=False)
    nodes = extraction_nodes(prep_kw["device"], prep_kw["num_workers"], resource_wait_s)
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    data = storage.resolve(data)
    prep_kw, resources = extraction_task(prep_kw, nodes)
    extract = ray.remote(**resources)(_prepare_remote)
    probe = ray.remote(num_cpus=1, num_gpus=0.25 if has_gpu else 0)(_probe_remote)
    feature_refs = [extract.remote(storage.resolve(c), data, prep_kw) for c in checkpoints]
    probe_refs = [[probe.remote(ref, s, probe_kw) for s in seed_list] for ref in feature_refs]
    flat = [r for refs in probe_refs for r in refs]
    bar = progress_bar(total=len(flat), desc="probe tasks", enabled=progress)
    pending = list(flat)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)  # raise a task's error here, with its message
        bar.update(len(done))
    bar.close()
    return ray.get(feature_refs), [ray.get(refs) for refs in probe_refs]


def extraction_nodes(device: str | None, num_workers: int | None, wait_s: float, poll_s: float = 1.0) -> list[dict]:
    """``ray.nodes()`` to decide the extraction task's GPU from (:func:`extraction_task`), once the
    cluster holds a node for the task: an autoscaling cluster starts none until asked, and an empty
    cluster says nothing about its GPUs.

    ``device=cpu``, or a GPU node up already: the nodes as they are. ``device=cuda``: the autoscaler is
    asked for the task's bundle with a GPU (its own CPU, ``num_workers`` loader CPUs when given: else
    :func:`extraction_task` fits them to the node that comes); still no GPU node after ``wait_s``
    seconds (``resource_wait_s``) is a ``ValueError``, one line. ``device=null``: as pretraining's
    ``train.use_gpu=null``, a CPU for the task is asked for, and the node that comes decides (on the
    cluster files every worker type has a GPU). Requests go through
    :func:`pretrain.preflight.request_bundles` and end when the wait does.
    """
    import ray

    def gpu_nodes() -> list[dict]:
        return [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU", 0) >= 1]

    if not str(device or "cuda").startswith("cuda") or gpu_nodes():
        return ray.nodes()
    gpu = device is not None
    bundle = {"CPU": 1 + (num_workers or 0), "GPU": 1} if gpu else {"CPU": 1}

    def arrived() -> bool:
        return bool(gpu_nodes()) if gpu else ray.cluster_resources().get("CPU", 0) >= 1

    if not arrived():
        print(f"waiting up to {wait_s:g} s (resource_wait_s) for {'a GPU node' if gpu else 'a node'} for feature "
              f"extraction", flush=True)
        deadline = time.monotonic() + wait_s
        with request_bundles([bundle], expire_after_s=wait_s + 30):
            while not arrived() and time.monotonic() < deadline:
                time.sleep(poll_s)
    if device is not None and not gpu_nodes():
        raise ValueError(f"device={device} but the Ray cluster has no GPU node after resource_wait_s={wait_s:g}; "
                         f"add GPU nodes, wait longer, or set device=cpu")
    return ray.nodes()


def extraction_task(prep_kw: dict, nodes: list[dict]) -> tuple[dict, dict]:
    """``(prep_kw with the extraction batch and loader processes resolved, the task's Ray resources)``.

    On a cluster with GPUs (``nodes``: ``ray.nodes()``) the task takes one, unless ``device`` says
    cpu. It reserves a CPU for itself and one for each loader process; the device's default number
    of loader processes is lowered to what the largest GPU node can hold (a task no node can hold
    would wait for ever), a number given is kept.
    """
    gpu_node_cpus = [int(n["Resources"].get("CPU", 0)) for n in nodes if n.get("Alive") and n["Resources"].get("GPU", 0) >= 1]
    on_gpu = bool(gpu_node_cpus) and str(prep_kw["device"] or "cuda").startswith("cuda")
    batch_size, workers = extraction_settings(prep_kw["batch_size"], prep_kw["num_workers"], on_gpu=on_gpu)
    if on_gpu and prep_kw["num_workers"] is None:
        workers = min(workers, max(0, max(gpu_node_cpus) - 1))
    return {**prep_kw, "batch_size": batch_size, "num_workers": workers}, {"num_cpus": 1 + workers, "num_gpus": 1 if on_gpu else 0}


def _prepare_remote(checkpoint: str, data: str, prep_kw: dict) -> dict:
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    return prepare_features(checkpoint, data, progress=False, **prep_kw)


def _probe_remote(features: dict, seed: int, probe_kw: dict) -> dict:
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    return probe_one_seed(features, seed, progress=False, **probe_kw)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m eval.linear", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (key=default), overridden by --config and then by key=value:\n" + defaults_help(LinearConfig))
    ap.add_argument("--config", help="YAML of settings (keys below); key=value arguments override it")
    ap.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="settings, e.g. checkpoint=runs/NAME-TIME data=data/shards/cifar10 epochs=20")
    return ap


def main(argv: list[str] | None = None) -> int:
    args, unknown = parser().parse_known_args(argv)
    try:
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]}: settings are key=value (e.g. epochs=20; see --help)")
        cfg = load_linear_config(args.config, args.overrides)
        if args.print_config:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
            return 0
        results = evaluate(cfg)
    except (ConfigError, OSError, ValueError, RuntimeError, MemoryError) as exc:  # OSError: FileNotFoundError, NotWritableError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for res in results:
        print(results_markdown(res))
        print(f"results: {res['out']}/results.json; curves: tensorboard --logdir {res['out']}/tb")
        if res["run_tensorboard"]:
            print(f"probe results beside the run's curves: tensorboard --logdir {Path(res['run_tensorboard']).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
