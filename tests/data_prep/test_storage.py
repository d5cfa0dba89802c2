"""Shards in an S3 bucket (a moto server on 127.0.0.1, fixture ``s3``): built, verified, resumed and
streamed exactly like local shards; a URL is never taken for a local path; each way a URL can be
unusable (bad scheme, missing bucket, no credentials) gets one line before any work."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import storage
from data_prep.__main__ import main
from data_prep.eval_stream import eval_loader
from data_prep.infomax_stream import infomax_loader
from data_prep.manifest import read_manifest, shard_paths

DIGITS = ["digits", "--size", "16", "--shard-size", "300", "--workers", "1", "--no-progress"]


def only_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def built(s3, tmp_path_factory):
    """The same digits command run with a local --out and with an s3:// --out (from an empty working
    directory, which the bucket build leaves empty: no local folder named like the URL)."""
    local = tmp_path_factory.mktemp("local") / "digits"
    url = s3.bucket("shards") + "/sets/digits"
    assert main([*DIGITS, "--out", str(local)]) == 0
    cwd, here = os.getcwd(), tmp_path_factory.mktemp("cwd")
    os.chdir(here)
    try:
        assert main([*DIGITS, "--out", url]) == 0
    finally:
        os.chdir(cwd)
    assert list(here.iterdir()) == []
    return local, url


@pytest.mark.parametrize("argv", [[*DIGITS, "--out", "htp://bucket/digits"], ["verify", "htp://bucket/digits"],
                                  [*DIGITS, "--out", "s3:///digits"]])
def test_a_url_is_never_written_as_a_local_folder(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    line = only_line(capsys.readouterr().err)
    assert line.startswith("error: ") and ("unsupported URL scheme htp://" in line or "no bucket" in line), line
    assert list(tmp_path.iterdir()) == []


def test_build_into_a_bucket_matches_a_local_build_and_verifies(built, tmp_path, monkeypatch, capsys):
    local, url = built
    remote = read_manifest(url)
    assert remote["splits"] == read_manifest(local)["splits"]  # byte-identical shards (same sha256s)
    assert storage.listdir(url + "/.build")  # resume records sit beside the shards
    monkeypatch.chdir(tmp_path)
    assert main(["verify", url]) == 0
    assert "matches its manifest" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_shard_in_the_bucket_is_reported_and_rebuilt_on_resume(built, capsys):
    _, url = built
    victim = url + "/train-000001.tar"
    good = storage.read_bytes(victim)
    storage.write_bytes(victim, good[: len(good) // 2])
    assert main(["verify", "--no-decode", url]) == 1
    assert "train: shard train-000001.tar sha256 differs" in capsys.readouterr().err
    assert main([*DIGITS, "--out", url]) == 0  # the same command resumes: only the bad shard is rewritten
    assert storage.read_bytes(victim) == good
    assert main(["verify", "--no-decode", url]) == 0


def test_missing_bucket_and_missing_credentials_get_one_line(s3, built, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*DIGITS, "--out", "s3://no-such-bucket/digits"]) == 2
    assert "bucket s3://no-such-bucket does not exist" in only_line(capsys.readouterr().err)

    import s3fs

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        assert main(["verify", built[1]]) == 2
        assert "no credentials for the object store" in only_line(capsys.readouterr().err)
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()
    assert list(tmp_path.iterdir()) == []


def test_streams_read_the_bucket_exactly_like_local_files(built):
    local, url = built
    assert all(p.startswith(url + "/train-") for p in shard_paths(url, "train"))
    for rank in (0, 1):
        kw = dict(batch_size=8, size=16, seed=3, batches_per_epoch=4, rank=rank, world_size=2, num_workers=0)
        a, b = list(infomax_loader(local, **kw)), list(infomax_loader(url, **kw))
        assert len(a) == len(b) == 4
        for x, y in zip(a, b):
            assert torch.equal(x["images"], y["images"]) and torch.equal(x["label"], y["label"])
    a = list(eval_loader(local, "test", kind="infomax", batch_size=64, size=16))
    b = list(eval_loader(url, "test", kind="infomax", batch_size=64, size=16))
    assert [x["key"] for x in a] == [y["key"] for y in b]
    assert torch.equal(torch.cat([x["images"] for x in a]), torch.cat([y["images"] for y in b]))
    assert np.unique(torch.cat([y["label"] for y in b]).numpy()).tolist() == list(range(10))


def test_gs_urls_go_through_gcsfs():
    import fsspec
    import gcsfs

    assert fsspec.get_filesystem_class("gs") is gcsfs.GCSFileSystem
    assert storage.is_url("gs://b/x") and storage.join("gs://b/x/", "m.json") == "gs://b/x/m.json"
    assert storage.parent("gs://b/x/run") == "gs://b/x" and storage.basename("gs://b/x/run/") == "run"


def test_a_mirror_of_a_bucket_uploads_and_leaves_no_folder_behind(s3, tmp_path):
    """A real process (as rank 0 and the driver are) appends through a mirror of an s3:// run folder and
    exits: the files are in the bucket and its temporary folder is gone (it used to stay, one folder a
    URL run, in the machine's temporary folder)."""
    import os
    import subprocess
    import sys

    url = s3.bucket("mirror") + "/run"
    storage.write_text(url + "/metrics.jsonl", "1\n")
    code = ("import sys; from storage import LocalMirror\n"
            "m = LocalMirror(sys.argv[1], fetch=('metrics.jsonl',))\n"
            "open(m.dir + '/metrics.jsonl', 'a').write('2\\n'); m.push()\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    subprocess.run([sys.executable, "-c", code, url], check=True, env={**os.environ, "TMPDIR": str(tmp)})
    assert storage.read_text(url + "/metrics.jsonl") == "1\n2\n"
    assert list(tmp.iterdir()) == []
    mirror = storage.LocalMirror(url)  # in this process: gone once the mirror is
    folder = mirror.dir
    assert os.path.isdir(folder)
    del mirror
    assert not os.path.exists(folder)


def test_a_mirror_uploads_at_most_every_interval_and_always_when_asked(s3):
    """A bucket run's rank 0 reports often; each upload sends the whole grown file, so it uploads at
    most every ``train.upload_every_s`` and whenever a checkpoint is written (``push()``)."""
    import os

    url = s3.bucket("throttle") + "/run"
    mirror = storage.LocalMirror(url)
    log = os.path.join(mirror.dir, "metrics.jsonl")
    with open(log, "a") as f:
        f.write("1\n")
    mirror.push(min_interval_s=3600)  # the first upload is never held back
    assert storage.read_text(url + "/metrics.jsonl") == "1\n"
    with open(log, "a") as f:
        f.write("2\n")
    mirror.push(min_interval_s=3600)  # an hour has not passed: held back
    assert storage.read_text(url + "/metrics.jsonl") == "1\n"
    mirror.push()  # a checkpoint, the end
    assert storage.read_text(url + "/metrics.jsonl") == "1\n2\n"
    with open(log, "a") as f:
        f.write("3\n")
    mirror.push(min_interval_s=0.0)
    assert storage.read_text(url + "/metrics.jsonl") == "1\n2\n3\n"
