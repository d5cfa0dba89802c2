"""The GPU suite's tests (``make test-gpu``; ``benchmarks/gpu_suite.py`` runs them and collects what they
record): selected only by ``-m gpu`` or a path under ``tests/gpu`` (``make test`` leaves them out, so a
machine with a GPU does not run them twice), and skipped, each with one line saying why, where CUDA
is absent (the reason is :func:`benchmarks.gpu_suite.no_cuda_reason`'s).

Fixtures: ``facts`` (a dict a test fills; written to the junit XML, where the runner reads it),
``gpu_shards`` (tiny labelled shards written with the project's shard writer) and ``ray_session``
(the suite's local Ray, with all the machine's CPUs).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

GPU_TESTS = Path(__file__).resolve().parent
SUITE_FILE = GPU_TESTS.parents[1] / "benchmarks" / "gpu_suite.py"
CLASSES = ["red", "green", "blue"]
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.int16)


def load_suite():
    """``benchmarks/gpu_suite.py`` as a module (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def selects_gpu_tests(config) -> bool:
    """Whether this pytest run asked for the GPU tests: a mark expression naming ``gpu``, or a path
    argument inside ``tests/gpu``."""
    if "gpu" in (config.option.markexpr or ""):
        return True
    for arg in config.args:
        path = (Path(config.invocation_params.dir) / arg.split("::")[0]).resolve()
        if path == GPU_TESTS or GPU_TESTS in path.parents:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Leave the GPU tests out unless asked for; where asked for, skip them without CUDA."""
    mine = [item for item in items if GPU_TESTS in Path(str(item.fspath)).parents]
    if not mine:
        return
    if not selects_gpu_tests(config):
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]
        return
    reason = load_suite().no_cuda_reason()
    if reason is not None:
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def ray_session():
    """The session's local Ray (as ``tests/conftest.py``'s) with every CPU of the machine (a GPU
    machine's ranks each take a CPU and a loader process); yields the folder of its workers' logs.

    Its workers log what ``torch.compile`` traces and every recompilation (``TORCH_LOGS``, which a
    process reads when it imports torch: this one has, Ray's workers have not yet)."""
    import os
    import shutil
    import tempfile

    import ray

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    os.environ["TORCH_LOGS"] = "recompiles,dynamo"
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(num_cpus=max(2, os.cpu_count() or 2), _temp_dir=tmp, include_dashboard=False, log_to_driver=False)
    yield Path(tmp) / "session_latest" / "logs"
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def facts(record_property):
    """A dict the test fills with what it measured; recorded (as JSON) even when the test fails."""
    found: dict = {}
    yield found
    record_property("facts", json.dumps(found))


@pytest.fixture(scope="session")
def gpu_shards(tmp_path_factory) -> Path:
    """Labelled shards (train 30, test 15 images of 96×96 PNG): class c is a flat colour plus noise."""
    from data_prep.shard_writer import EncodeOptions, SourceItem, SplitSource, build_dataset

    out = tmp_path_factory.mktemp("gpu") / "shards"
    rng = np.random.default_rng(0)

    def source(split: str, n: int) -> SplitSource:
        labels = np.arange(n) % len(CLASSES)
        noise = rng.integers(-40, 41, size=(n, 96, 96, 3))
        images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        return SplitSource(lambda: (SourceItem(key=f"{split}_{i:04d}", label=int(labels[i]), origin=f"{split}[{i}]",
                                               array=images[i]) for i in range(n)), n, labelled=True)

    build_dataset(out, "synthetic", {"seed": 0, "size": 96}, CLASSES, {"train": source("train", 30), "test": source("test", 15)},
                  EncodeOptions(fmt="png"), shard_size=10, progress=False)
    return out

