"""Test-wide settings: one intra-op thread (2-core machine; Ray workers and data loaders share it),
one local Ray session for every test that needs one (fixture ``ray_session``), the ``ray`` marker,
and an S3-compatible server on 127.0.0.1 for the object-storage tests (fixture ``s3``)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

import pytest
import torch

# Every local Ray the tests start (in this process, in the CLI processes they spawn, in `ray start`
# heads) binds 127.0.0.1 only; Ray reads this when it is imported, so it is set before any test module
# imports Ray (the same setting `python -m pretrain` makes, pretrain.preflight.local_ray_on_loopback).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
torch.set_num_threads(1)

# Fixtures that start Ray: `ray_session` (below) and `head` (tests/cluster/conftest.py, a `ray start` head).
RAY_FIXTURES = {"ray_session", "head"}


def pytest_collection_modifyitems(config, items):
    """Every test that uses a Ray fixture gets the ``ray`` marker, so ``-m "not ray"`` (``make
    test-fast``) starts no Ray; tests that start Ray some other way mark themselves.

    The tests that share ``ray_session`` run last, one after another: the session starts once, never
    sits idle beside other tests, and is never found by a test that did not ask for it
    (``eval.linear`` uses a running Ray when there is one).
    """
    for item in items:
        if RAY_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.ray)
    items.sort(key=lambda item: "ray_session" in item.fixturenames)  # stable: the order is kept otherwise


@pytest.fixture(scope="session")
def ray_session():
    """One local 2-CPU Ray for the whole test session, its files in a short temporary directory."""
    import ray

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(num_cpus=2, _temp_dir=tmp, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class S3Server:
    """A moto S3 server the AWS clients of this process (and of processes it starts) talk to."""
    endpoint: str

    def bucket(self, name: str) -> str:
        """Create bucket ``name``; return ``s3://name``."""
        import fsspec

        fsspec.filesystem("s3").mkdir(name)
        return f"s3://{name}"


def clear_s3_clients() -> None:
    """fsspec caches S3 clients with their endpoint and credentials; drop them after a change."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3():
    """moto's server mode on a free 127.0.0.1 port, found through ``AWS_ENDPOINT_URL`` as any S3-compatible
    store would be, with dummy credentials and no AWS config files; stopped (and the environment
    restored) after the module."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with status {proc.returncode}")
            time.sleep(0.1)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_CONFIG_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    clear_s3_clients()
    try:
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        clear_s3_clients()
