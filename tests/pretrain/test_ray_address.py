"""Which Ray a driver uses: a run submitted as a Ray job joins that cluster (Ray sets RAY_ADDRESS for
the entrypoint); a plain local run starts its own Ray on the loopback address."""
from pretrain import preflight


def test_a_job_entrypoint_joins_its_cluster(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert preflight.joins_cluster(None)
    assert preflight.ray_init_args(None, {"include_dashboard": True}) == (None, {"include_dashboard": True})


def test_a_local_run_starts_its_own_ray_on_loopback(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not preflight.joins_cluster(None)
    assert preflight.ray_init_args(None, {"include_dashboard": True}) == (
        "local", {"include_dashboard": True, "dashboard_host": "127.0.0.1"})
    assert preflight.ray_init_args("ray://10.0.0.1:10001", None) == ("ray://10.0.0.1:10001", {})
