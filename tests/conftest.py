"""Test-wide settings: one intra-op thread (2-core machine; Ray workers and data loaders share it),
one local Ray session for every test that needs one (fixture ``ray_session``), the ``ray`` marker,
an S3-compatible server on 127.0.0.1 for the object-storage tests (fixture ``s3``), and one
uninterrupted 2-worker InfoMax run a session (``infomax_reference``, on ``digits_shards``) that the
crashed, killed and resumed runs end on exactly and whose checkpoints the Ray evaluation reads."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.support.local_s3 import local_s3_server
from tests.support.run_states import DIGITS_ARGS, reference_overrides

# Every local Ray the tests start (in this process, in the CLI processes they spawn, in `ray start`
# heads) binds 127.0.0.1 only; Ray reads this when it is imported, so it is set before any test module
# imports Ray (the same setting `python -m pretrain` makes, pretrain.preflight.local_ray_on_loopback).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
torch.set_num_threads(1)

# The temporary folder of this process and of every process it starts (CLI runs, Ray's workers, loader
# workers) is one short folder of its own: what a test's killed process leaves there (a checkpoint in
# progress, multiprocessing's folders, Ray's session files) goes with it at the end, not into /tmp.
# Short: Ray puts its socket paths under it, which must stay under 107 bytes.
TEST_TMP = tempfile.mkdtemp(prefix="pt", dir="/tmp")
os.environ["TMPDIR"] = tempfile.tempdir = TEST_TMP

# A local ray.init() turns on token authentication and, finding no token, writes a new one to
# ~/.ray/auth_token (always there, whatever RAY_AUTH_TOKEN_PATH says). The tests' Rays (in this process
# and the processes it starts) share a token of their own instead; tests of a token set theirs.
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
HOME_TOKEN = Path.home() / ".ray" / "auth_token"
HOME_TOKEN_BEFORE = HOME_TOKEN.exists()


@pytest.hookimpl(trylast=True)  # after pytest's own hook has torn down the session fixtures (Ray)
def pytest_sessionfinish(session, exitstatus):
    """Fail a session that wrote a Ray token into the home folder. Remove the session's temporary folder
    after a passing run; keep it for a look after a failure."""
    if not HOME_TOKEN_BEFORE and HOME_TOKEN.exists():
        print(f"\nthe tests wrote {HOME_TOKEN}: a Ray they started had no token of its own")
        session.exitstatus = exitstatus = 1
    if exitstatus == 0:
        shutil.rmtree(TEST_TMP, ignore_errors=True)
    else:
        print(f"\ntemporary files of this test session kept in {TEST_TMP}")

# Fixtures that start Ray: `ray_session` (below) and `head` (tests/cluster/conftest.py, a `ray start` head).
RAY_FIXTURES = {"ray_session", "head"}


# Fixtures whose tests pytest-xdist keeps in one worker (pytest_collection_modifyitems): the session's
# Ray, the cluster tests' `ray start` head, the fake autoscaling cluster, each module's S3 server.
SHARED_FIXTURES = ("ray_session", "head", "cluster", "s3")


def long_and_alone(item) -> bool:
    """A test marked ``e2e`` (most run for a minute or more) that shares no fixture of
    :data:`SHARED_FIXTURES`: under pytest-xdist each such test is a unit of its own, and single-test
    units go out in collection order, so these go first: the many short tests fill the end and both
    workers finish together (the README walkthrough, collected last, left one core idle for a minute
    at the end)."""
    return item.get_closest_marker("e2e") is not None and not any(f in item.fixturenames for f in SHARED_FIXTURES)


def pytest_collection_modifyitems(config, items):
    """Every test that uses a Ray fixture gets the ``ray`` marker, so ``-m "not ray"`` (``make
    test-fast``) starts no Ray; tests that start Ray some other way mark themselves.

    Under pytest-xdist (``make test``: ``-n 2 --dist loadgroup``) the tests that share an expensive
    fixture (:data:`SHARED_FIXTURES`) are one group, run by one worker in the order below, so the
    fixture starts once; the other tests go to either worker.

    The long end-to-end tests that share no such fixture come first (:func:`long_and_alone`). The
    tests that share ``ray_session`` come last, one after another: in one process (plain ``pytest``)
    the session starts once, never sits idle beside other tests, and is never found by a test that did
    not ask for it (``eval.linear`` uses a running Ray when there is one). Under pytest-xdist their
    group, the largest, goes out first (xdist sends the largest units first), and the tests its worker
    runs after it find the session up. A module with a ``ray_session`` of its own
    (``tests/pretrain/test_train_s3.py``: its workers must see the S3 endpoint) shuts the shared one down,
    so its tests come after all the others: none of them finds the shared session gone and starts a Ray
    of its own for every launch.
    """
    for item in items:
        if RAY_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.ray)
    items.sort(key=lambda item: ("ray_session" in item.fixturenames,  # stable: the order is kept otherwise
                                 hasattr(getattr(item, "module", None), "ray_session"),
                                 not long_and_alone(item)))
    groups = {}
    for item in items:
        shared = [name for name in SHARED_FIXTURES if name in item.fixturenames]
        if shared:  # one group a test: the first that applies (test_train_s3.py's tests: ray_session)
            groups[item.nodeid] = shared[0] if shared[0] != "s3" else f"s3:{item.path}"  # s3: module-scoped
    if hasattr(config, "workerinput") and GROUPS_ENV in os.environ:  # an xdist worker: tell the scheduler
        Path(os.environ[GROUPS_ENV], f"{config.workerinput['workerid']}.json").write_text(json.dumps(groups))


# pytest-xdist's own --dist loadgroup passes a test's group to its scheduler inside the test's node id,
# which pytest 9.2 no longer lets a plugin change (pytest-xdist issue 1386: the tests go out ungrouped).
# Here each worker writes its tests' groups to a file in the folder GROUPS_ENV names, and the scheduler
# below reads them once every worker has collected.
GROUPS_ENV = "PT_XDIST_GROUPS"


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        if config.getoption("dist") == "loadgroup":
            os.environ[GROUPS_ENV] = tempfile.mkdtemp(prefix="groups", dir=TEST_TMP)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``: the tests of one group (the workers' files) are one unit of work, sent to one
    worker in collection order; every other test is a unit of its own; the largest units go out first."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        groups: dict | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = {}
                for f in Path(os.environ[GROUPS_ENV]).glob("*.json"):
                    self.groups.update(json.loads(f.read_text()))
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


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


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory):
    """``python -m data_prep digits`` into a local folder (32×32 RGB, 400 images a shard): the same shards,
    byte for byte, that ``tests/pretrain/test_train_s3.py`` writes into its bucket."""
    from data_prep.__main__ import main as data_prep_main

    out = tmp_path_factory.mktemp("digits") / "shards"
    assert data_prep_main([*DIGITS_ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def infomax_reference(digits_shards, tmp_path_factory):
    """The run directory of the uninterrupted 12-step, 2-worker InfoMax run (with the online probe) on
    :func:`digits_shards` (checkpoints at 4, 8 and 12), launched once for the session on the Ray that is
    up (the test session's ``ray_session`` when a test asked for it first; else a local one of its own)."""
    from pretrain.config import load_config
    from pretrain.train import launch

    return launch(load_config(None, reference_overrides(digits_shards, tmp_path_factory.mktemp("reference")))).run_dir


@dataclass
class S3Server:
    """A moto S3 server the AWS clients of this process (and of processes it starts) talk to."""
    endpoint: str

    def bucket(self, name: str) -> str:
        """Create bucket ``name``; return ``s3://name``."""
        import fsspec

        fsspec.filesystem("s3").mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="module")
def s3():
    """moto's server mode on a free 127.0.0.1 port (:func:`tests.support.local_s3.local_s3_server`), found
    through ``AWS_ENDPOINT_URL`` as any S3-compatible store would be, with dummy credentials and no AWS
    config files; stopped (and the environment restored) after the module."""
    with local_s3_server() as endpoint:
        yield S3Server(endpoint)
