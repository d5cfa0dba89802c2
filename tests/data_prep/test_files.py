"""The one sha256 helper and the one atomic-write helper: a killed writer or a failing body never
leaves half a file where a reader looks."""
import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from storage.files import atomic_write, atomic_write_bytes, atomic_write_text, sha256_file, sha256_stream

ROOT = Path(__file__).resolve().parents[2]


def test_sha256_file_matches_hashlib_across_block_boundaries(tmp_path):
    data = os.urandom((1 << 22) + 12345)  # more than one 4 MiB read block
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    stream = io.BytesIO(data)
    stream.read(5)  # a stream hashes what is left in it
    assert sha256_stream(stream) == hashlib.sha256(data[5:]).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_text(path, "old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    with atomic_write(tmp_path / "t.pt") as f:
        torch.save({"a": torch.arange(3)}, f)
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["a"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt", "x.json"]


def test_atomic_write_keeps_old_file_when_body_raises(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path, "w") as f:
            f.write("half of the new")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(path, "ab"):
            pass


def test_atomic_write_killed_writer_leaves_old_file(tmp_path):
    """SIGKILL a real process in the middle of a write: the target still holds the old bytes."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old checkpoint")
    script = textwrap.dedent(f"""
        import sys, time
        from storage.files import atomic_write
        with atomic_write({str(path)!r}) as f:
            f.write(b"x" * 100000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert path.read_bytes() == b"old checkpoint"
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.startswith("checkpoint.pt.") and leftovers[0].suffix == ".tmp"
    assert leftovers[0].stat().st_size == 100000
