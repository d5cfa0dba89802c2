"""An S3-compatible store on 127.0.0.1 for the tests and the benchmarks: moto's server mode in its own
process, found through ``AWS_ENDPOINT_URL`` as any S3-compatible store would be (see
:mod:`storage`), with dummy credentials and no AWS config files.

It is test infrastructure: ``tests/conftest.py``'s ``s3`` fixture starts it, and
``benchmarks/stream_throughput.py --s3`` imports it from the repository root. Nothing in the packages
imports it, and it imports no moto itself (the server is ``python -m moto.server`` in a subprocess), so
moto stays a ``dev`` extra that only starting the server needs.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Iterator


def _clear_s3_clients() -> None:
    """fsspec caches S3 clients with their endpoint and credentials; drop them after a change."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def local_s3_server() -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port; yields its endpoint URL. Inside, this process's
    environment (inherited by the processes it starts) points the AWS clients at it; on exit the
    server is stopped and the environment restored."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_CONFIG_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"moto server exited with status {proc.returncode} "
                                       "(moto[server] comes with the dev extra: pip install -e '.[dev]')")
                time.sleep(0.1)
        os.environ.update(env)
        _clear_s3_clients()
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _clear_s3_clients()
