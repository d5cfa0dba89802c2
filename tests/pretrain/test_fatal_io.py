"""Errors no retry fixes end a run at once in one line, the earlier checkpoints intact: a disk that
fills up under a running run (a real 64 MB tmpfs as ``run.root``). The object store that dies
mid-run is ``tests/pretrain/test_train_s3.py::test_the_store_dying_mid_run_is_one_line``."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from pretrain import checkpoint as ck
from pretrain.run_dir import checkpoint_dir_name
from pretrain.config import load_config
from tests.support.shards import folder_shards

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return folder_shards(tmp_path_factory.mktemp("fio"), 16, n_classes=2, size=32, shard_size=8)


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 MB tmpfs of its own (the tests run as root; mount(8) needs that)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): the disk-full test needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill_when(path_appears, mnt, stop: threading.Event) -> None:
    """Once ``path_appears`` exists, fill ``mnt`` to the last byte (a real ENOSPC for what comes next)."""
    while not stop.is_set() and not path_appears():
        time.sleep(0.05)
    with open(mnt / "filler", "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 20))
                f.flush()
        except OSError:
            pass
    for i in range(100):  # the last few blocks
        try:
            (mnt / f"crumb{i}").write_bytes(bytes(4096))
        except OSError:
            break


def test_a_full_disk_ends_the_run_in_one_line_with_its_checkpoints_intact(ray_session, shards, tmpfs):
    from pretrain.fatal import RunFailed
    from pretrain.train import launch

    cfg = load_config(None, [
        f"data.shards={shards}", f"run.root={tmpfs}", "run.name=full", "task.kind=infomax", "task.estimator=eta-mine",
        "task.kwargs.hidden_dim=16", "task.kwargs.embed_dim=8", "model.encoder=dcgan", "model.depth=2",
        "data.batch_size=8", "train.num_workers=1", "train.steps=100000", "train.report_every=4",
        "train.checkpoint_every=4", "train.max_failures=2"])

    def first_checkpoint():
        return any(tmpfs.glob(f"full-*/{checkpoint_dir_name(4)}/{ck.CHECKSUM_FILE}"))

    stop = threading.Event()
    filler = threading.Thread(target=fill_when, args=(first_checkpoint, tmpfs, stop), daemon=True)
    filler.start()
    try:
        with pytest.raises(RunFailed) as info:
            launch(cfg)
    finally:
        stop.set()
        filler.join()
    (run,) = tmpfs.glob("full-*")
    message = str(info.value)
    assert "\n" not in message and "no space left on the device" in message, message
    assert f"cannot write {run}" in message and f"--resume {run}" in message
    payload = ck.load_checkpoint(run)  # the newest checkpoint that verifies: intact, loadable
    assert payload["step"] >= 4 and payload["step"] % 4 == 0


def test_arrow_s3_losing_the_store_is_one_line_for_a_bucket_run_only():
    """Ray Train's own uploads go through Arrow's S3 client, whose error after its retries is an OSError
    saying NETWORK_CONNECTION (the words of a real run whose store was killed): one line for a run in a
    bucket; for a local run directory it is not the store's error."""
    from pretrain import fatal

    exc = OSError("When completing multiple part upload for key 'runs/x/checkpoint_manager_snapshot.json' in "
                  "bucket 'dying': AWS Error NETWORK_CONNECTION during CompleteMultipartUpload operation: "
                  "curlCode: 7, Could not connect to server")
    line = fatal.classify(exc, "s3://dying/runs/x")
    assert line.startswith("cannot reach the store of s3://dying/runs/x: ") and line.endswith(
        "continue with python -m pretrain --resume s3://dying/runs/x once the store is back")
    assert fatal.classify(exc, "/tmp/runs/x") is None
