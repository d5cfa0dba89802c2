"""GPU throughput of the jigsaw step, eager against compiled, and whether the data side keeps up.

One command, meant to take under 5 minutes on one GPU:

    python benchmarks/gpu_throughput.py --json benchmarks/results/gpu_throughput.json
    python benchmarks/gpu_throughput.py --device cpu --quick     # seconds: every part runs, figures mean nothing

(1) Step: the jigsaw-MI task with η-MINE on ResNet50 (``--encoder``), the loop's own ``train_step``,
bf16 autocast (fp32 with ``--quick``), channels_last, fused Adam, at 10 / 40 / 160 images a step (``--images``; 16
permutations each, unique tiles), eager against ``train.compile`` (``pretrain.train.compile_model``:
CUDA graphs on CUDA). Per setting: step time, images/s, FLOPs of one step (``torch.utils.flop_counter``
on the first step), achieved TFLOP/s and MFU = achieved / ``--peak-tflops`` (default: one H200's
989 TFLOP/s dense bf16). The ratio compiled/eager is printed side by side, and the images/s of the
largest batch against the smallest (what ``data.images_per_batch`` with ``optim.lr_scaling`` buys).

(2) Data: the jigsaw stream (``data_prep``, the training loader with ``--loader-workers`` processes)
on synthetic 292x292 JPEG shards, with the per-patch work on the host and with ``data.augment_on=device``
(uint8 tiles; the device then standardises them), and with ``data.decode_on=device`` too (JPEG bytes; the
device decodes and crops them, counted in the consuming process), in images/s, against the images/s the fastest step
consumes (for ``augment_on=device`` with the eager cost of augmenting on the device added to it, measured
at the largest batch): a keep-up ratio >= 1 means the GPU never waits for data.
"""
from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pretrain.plan import H200_BF16_DENSE_TFLOPS
from pretrain.train import cuda_math


def step_config(encoder: str, images: int, perms: int, shards: str = "/nonexistent", augment_on: str = "host",
                loader_workers: int = 0, bf16: bool = True, decode_on: str = "host"):
    from pretrain.config import load_config

    return load_config(None, [
        f"data.shards={shards}", "task.kind=jigsaw-mi", "task.estimator=eta-mine", f"model.encoder={encoder}",
        f"data.images_per_batch={images}", f"data.perms_per_image={perms}", f"data.augment_on={augment_on}",
        f"data.decode_on={decode_on}",
        f"data.loader_workers={loader_workers}", f"train.bf16={str(bf16).lower()}", "train.channels_last=true",
        *(["model.depth=1", "model.kwargs.image_size=64"] if encoder == "dcgan" else [])])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(cfg, device: torch.device, compiled: bool, reps: int, backend: str, warmup: int = 3,
                 count_flops: bool = False) -> dict:
    """Seconds per step of ``cfg``'s task, after warm-up steps, as the loop runs it: each step prepares
    the same host batch (pinned as the loop's loader pins it), copies it to the device and steps.
    ``count_flops``: one more step first, under the FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.plan import example_batch
    from pretrain.train import (build_optimizers, build_task_from_config, compile_model, permutations_of,
                                pins_memory, to_device, train_step)

    torch.manual_seed(0)
    permutations = permutations_of(cfg)
    task = build_task_from_config(cfg, permutations).to(device).to(memory_format=torch.channels_last)
    main_opt, eta_opt = build_optimizers(cfg, task)
    task.train()
    host_batch = example_batch(cfg, permutations)
    if pins_memory(cfg, device):
        host_batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in host_batch.items()}
    bf16 = cfg.train.bf16
    if compiled:
        torch._dynamo.reset()  # graphs are cached per code object: a fresh, static graph for this shape
    model = compile_model(task, device, backend=backend) if compiled else task

    def step(i: int) -> None:
        train_step(model, task, to_device(task.host_prepare(host_batch), device), i, main_opt, eta_opt, bf16=bf16)

    flops = None
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            step(0)
        flops = float(counter.get_total_flops())
    t = time.perf_counter()
    for i in range(warmup):  # warm-up: compilation, cuDNN's kernel search, CUDA graph recording
        step(i)
    sync(device)
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(reps):
        step(i)
    sync(device)
    return {"step_s": (time.perf_counter() - t) / reps, "warmup_s": warmup_s, "flops_per_step": flops}


def make_shards(work: Path, n_images: int) -> Path:
    """``n_images`` smooth random 292x292 JPEGs (the size ImageNet shards are stored at) as shards."""
    from data_prep.manifest import MANIFEST_NAME
    from data_prep.sample_images import random_sources
    from data_prep.shard_writer import EncodeOptions, build_dataset

    if not (work / "shards" / MANIFEST_NAME).is_file():
        build_dataset(work / "shards", "random", {"images": n_images}, *random_sources(n_images, 2, 292, smooth=True),
                      EncodeOptions("jpg"), shard_size=50, progress=False)
    return work / "shards"


def measure_data(cfg, batches: int, device: torch.device) -> float:
    """Source images/s of the training loader (``cfg.data.loader_workers`` processes, pinning its
    batches on CUDA as the loop does), first batch excluded. With ``data.decode_on=device`` each batch
    is also decoded and cropped on ``device`` (``pretrain.train.to_device``), in the consuming process."""
    from pretrain.train import open_loader, permutations_of, pins_memory, to_device

    loader = iter(open_loader(cfg, permutations_of(cfg), 0, 1, 0, 0, pin_memory=pins_memory(cfg, device)))
    decode = cfg.data.decode_on == "device"
    to_device(next(loader), device) if decode else next(loader)  # start-up, shuffle buffer, decoder warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(batches):
        batch = next(loader)
        if decode:
            to_device(batch, device)
    sync(device)
    return batches * cfg.data.images_per_batch / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--encoder", default="resnet50")
    p.add_argument("--images", default="10,40,160", help="images a step, comma-separated")
    p.add_argument("--perms", type=int, default=16, help="permutations per image")
    p.add_argument("--reps", type=int, default=20, help="measured steps per setting")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                   help="the device's peak for MFU (default: H200 dense bf16)")
    p.add_argument("--loader-workers", type=int, default=8, help="DataLoader processes of the data part")
    p.add_argument("--data-batches", type=int, default=30, help="batches timed in the data part")
    p.add_argument("--work", default=None, help="folder for the synthetic shards (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--quick", action="store_true",
                   help="seconds: a 1-layer DCGAN encoder in fp32, 2 and 4 images x 2 permutations, 1 step, compile with aot_eager "
                        "(graphs captured, no code generated), 0 loader workers")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sizes = [int(s) for s in args.images.split(",")]
    backend, bf16, warmup, n_images = "inductor", True, 3, 400
    if args.quick:
        args.encoder, args.perms, args.reps, sizes = "dcgan", 2, 1, [2, 4]
        args.loader_workers, args.data_batches, backend, bf16, warmup, n_images = 0, 2, "aot_eager", False, 1, 20
    if device.type == "cuda":
        cuda_math()  # as a training rank sets them

    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "setup": {"encoder": args.encoder, "perms": args.perms, "reps": args.reps, "peak_tflops": args.peak_tflops,
                     "bf16": bf16, "compile_backend": backend, "quick": args.quick}, "steps": [], "data": []}
    for images in sizes:
        cfg = step_config(args.encoder, images, args.perms, loader_workers=args.loader_workers, bf16=bf16)
        row = {"images": images}
        for mode in ("eager", "compiled"):
            m = measure_step(cfg, device, mode == "compiled", args.reps, backend, warmup, count_flops=mode == "eager")
            row[mode] = {"step_s": m["step_s"], "warmup_s": m["warmup_s"], "images_per_s": images / m["step_s"]}
            if m["flops_per_step"] is not None:
                row["flops_per_step"] = m["flops_per_step"]
            tflops = row["flops_per_step"] / m["step_s"] / 1e12
            row[mode].update({"tflops": tflops, "mfu": tflops / args.peak_tflops})
        row["compiled_over_eager"] = row["compiled"]["images_per_s"] / row["eager"]["images_per_s"]
        out["steps"].append(row)
        e, c = row["eager"], row["compiled"]
        print(f"{images:4d} images x {args.perms} perms, {row['flops_per_step'] / 1e9:,.0f} GFLOP/step: "
              f"eager {e['step_s'] * 1e3:.1f} ms ({e['images_per_s']:,.0f} img/s, MFU {e['mfu']:.1%}); "
              f"compiled {c['step_s'] * 1e3:.1f} ms ({c['images_per_s']:,.0f} img/s, MFU {c['mfu']:.1%}); "
              f"compiled/eager = {row['compiled_over_eager']:.2f}", flush=True)
    smallest, largest = out["steps"][0], out["steps"][-1]
    if len(sizes) > 1:  # larger batches a worker (data.images_per_batch with optim.lr_scaling): what they buy
        out["largest_over_smallest"] = {m: largest[m]["images_per_s"] / smallest[m]["images_per_s"]
                                        for m in ("eager", "compiled")}
        print(f"images/s at {sizes[-1]} against {sizes[0]} images a step: eager "
              f"{out['largest_over_smallest']['eager']:.2f}, compiled {out['largest_over_smallest']['compiled']:.2f}",
              flush=True)

    # with data.augment_on=device the step also grays, standardises and scrambles the uint8 tiles:
    # its eager cost at the largest batch, added to the fastest step when asking if the data keeps up
    m = measure_step(step_config(args.encoder, sizes[-1], args.perms, augment_on="device",
                                 loader_workers=args.loader_workers, bf16=bf16), device, False, args.reps, backend, warmup)
    extra_s = m["step_s"] - largest["eager"]["step_s"]
    out["device_augment_step"] = {"images": sizes[-1], "eager_step_s": m["step_s"], "extra_s": extra_s}
    print(f"{sizes[-1]:4d} images, augment on device: eager {m['step_s'] * 1e3:.1f} ms, "
          f"{extra_s * 1e3:+.1f} ms against augment on host", flush=True)

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-gpu-"))
    if not args.work:  # gigabytes of runs and shards: gone when the benchmark exits
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    shards = make_shards(work, n_images)
    fastest = max(max(r["eager"]["images_per_s"], r["compiled"]["images_per_s"]) for r in out["steps"])
    for augment_on, decode_on in (("host", "host"), ("device", "host"), ("device", "device")):
        # images/s the fastest step takes in; on the device it also spends extra_s a step augmenting
        consumed = fastest if augment_on == "host" else 1 / (1 / fastest + max(extra_s, 0.0) / sizes[-1])
        cfg = step_config(args.encoder, sizes[-1], args.perms, str(shards), augment_on, args.loader_workers, bf16,
                          decode_on)
        rate = measure_data(cfg, args.data_batches, device)
        out["data"].append({"augment_on": augment_on, "decode_on": decode_on, "loader_workers": args.loader_workers,
                            "images_per_s": rate, "keep_up": rate / consumed})
        print(f"data, {args.loader_workers} loader workers, augment on {augment_on}, decode on {decode_on}: "
              f"{rate:,.0f} images/s = {rate / consumed:.2f}x what the fastest step consumes "
              f"({consumed:,.0f} images/s)", flush=True)
    out["device_over_host_augment"] = out["data"][1]["images_per_s"] / out["data"][0]["images_per_s"]
    print(f"data: augment on device / on host = {out['device_over_host_augment']:.2f}", flush=True)
    out["device_over_host_decode"] = out["data"][2]["images_per_s"] / out["data"][1]["images_per_s"]
    print(f"data: decode on device / on host (augment on device) = {out['device_over_host_decode']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
