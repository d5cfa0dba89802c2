"""What the Ray Train end-to-end tests of pretraining share: scikit-learn's digits as ``data_prep digits``
writes them, and one uninterrupted run of :func:`tests.support.run_states.reference_overrides` on them,
the reference that crashed, killed and resumed runs (``test_train_ray.py``, ``test_train_s3.py``) must
end on exactly."""
from __future__ import annotations

import pytest

from tests.support.run_states import DIGITS_ARGS, reference_overrides


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory):
    """``python -m data_prep digits`` into a local folder (32×32 RGB, 400 images a shard): the same shards,
    byte for byte, that ``test_train_s3.py`` writes into its bucket."""
    from data_prep.__main__ import main as data_prep_main

    out = tmp_path_factory.mktemp("digits") / "shards"
    assert data_prep_main([*DIGITS_ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def infomax_reference(digits_shards, tmp_path_factory):
    """The run directory of the uninterrupted 12-step, 2-worker InfoMax run (with the online probe) on
    :func:`digits_shards` (checkpoints at 4, 8 and 12), launched once for the session on the Ray that is up (the test
    session's ``ray_session`` when a test asked for it first; else a local one of its own)."""
    from pretrain.config import load_config
    from pretrain.train import launch

    return launch(load_config(None, reference_overrides(digits_shards, tmp_path_factory.mktemp("reference")))).run_dir
