"""Each benchmark script runs end to end in a tiny setting and prints its side-by-side ratio (the
figures of such runs mean nothing; the measured ones are in docs/performance.md)."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    """benchmarks/<name>.py as a module (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_probe_cached_against_usual(tmp_path, capsys):
    figures = tmp_path / "lp.json"
    assert load("linear_probe").main(["--limit", "40", "--epochs", "1", "--work", str(tmp_path),
                                      "--json", str(figures)]) == 0  # 0: both probes gave the same accuracies
    out = capsys.readouterr().out
    assert re.search(r"speed-up \d+\.\dx; accuracies agree", out), out
    saved = json.loads(figures.read_text())
    assert saved["speedup"] > 0 and saved["max_abs_accuracy_difference"] == 0 and saved["train"] == 40


def test_stream_throughput_pipelines(tmp_path, capsys):
    load("stream_throughput").main(["--images", "30", "--batches", "2", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    for row in ("(a) decode only", "(b) jigsaw stream", "(c) naive ImageFolder+PIL", "(b'') unique tiles, 292 shards"):
        assert row in out
    ratios = re.findall(r"^ratio (\S+) .* = (\d+\.\d\d)$", out, re.M)
    assert [r for r, _ in ratios] == ["b/a", "b/c", "b'/c", "b''/c"] and all(float(v) > 0 for _, v in ratios)


def test_train_step_flops_part(tmp_path, capsys):
    figures = tmp_path / "ts.json"
    load("train_step").main(["--quick", "--skip-ab", "--threads", "1", "--work", str(tmp_path), "--json", str(figures)])
    out = capsys.readouterr().out
    for dtype, n in (("fp32", 256), ("bf16", 64)):
        assert re.search(rf"^{dtype}: matmul {n}\^2 .* resnet18 jigsaw step .* = \d+% of matmul$", out, re.M), out
    saved = json.loads(figures.read_text())
    assert saved["flops_bf16"]["resnet50_step_flops"] == saved["flops_fp32"]["resnet50_step_flops"] > 0


@pytest.mark.e2e
@pytest.mark.ray
def test_train_step_plain_against_ray_loop(tmp_path, capsys, ray_session):
    """The a/b comparison needs a Ray Train run: on the test session's Ray."""
    figures = tmp_path / "ts.json"
    load("train_step").main(["--quick", "--skip-flops", "--threads", "1", "--work", str(tmp_path), "--json", str(figures)])
    out = capsys.readouterr().out
    assert re.search(r"\(a\) plain loop: start-up .*\n.*\(b\) Ray loop: .*\n.*after start-up .* a/b = \d+\.\d{3}", out), out
    saved = json.loads(figures.read_text())
    assert saved["ratio_a_over_b_after_startup"] > 0


def test_gpu_throughput_runs_on_cpu(tmp_path, capsys):
    figures = tmp_path / "gpu.json"
    load("gpu_throughput").main(["--device", "cpu", "--quick", "--work", str(tmp_path), "--json", str(figures)])
    out = capsys.readouterr().out
    assert re.search(r"^ +2 images x 2 perms, .* compiled/eager = \d+\.\d\d$", out, re.M), out
    assert re.search(r"^images/s at 4 against 2 images a step: eager \d+\.\d\d, compiled \d+\.\d\d$", out, re.M), out
    assert re.search(r"^data: augment on device / on host = \d+\.\d\d$", out, re.M), out
    saved = json.loads(figures.read_text())
    assert re.search(r"^data: decode on device / on host \(augment on device\) = \d+\.\d\d$", out, re.M), out
    assert [(d["augment_on"], d["decode_on"]) for d in saved["data"]] == [("host", "host"), ("device", "host"),
                                                                            ("device", "device")]
    assert [r["images"] for r in saved["steps"]] == [2, 4] and saved["steps"][0]["flops_per_step"] > 0
    assert saved["largest_over_smallest"]["eager"] > 0
    assert {d["augment_on"] for d in saved["data"]} == {"host", "device"}
    assert all(d["images_per_s"] > 0 for d in saved["data"])
    assert re.search(r"^ +4 images, augment on device: eager \d+\.\d ms, [+-]\d+\.\d ms against augment on host$", out, re.M)
    assert saved["device_augment_step"]["images"] == 4 and saved["device_augment_step"]["eager_step_s"] > 0


def test_eta_gradient_variance_side_by_side(tmp_path, capsys):
    figures = tmp_path / "eg.json"
    out = load("eta_gradient_variance").main(["--dim", "3", "--train-steps", "5", "--batches", "6", "--batch", "16",
                                               "--n-train", "200", "--json", str(figures)])
    text = capsys.readouterr().out
    assert re.search(r"^ratio b/a = \d+\.\d\d, ratio c/a = \d+\.\d\d", text, re.M), text
    saved = json.loads(figures.read_text())
    assert saved["noise_ratio_b_over_a"] == out["noise_ratio_b_over_a"] > 0
    # η below η* over-weights the marginal term: its mean gradient moves away from DV's
    assert saved["mean_grad_rel_diff"]["c"] > saved["mean_grad_rel_diff"]["b"]


@pytest.mark.e2e
@pytest.mark.ray
def test_report_cost_one_report_against_one_every_step(tmp_path, capsys, ray_session):
    figures = tmp_path / "rc.json"
    load("report_cost").main(["--quick", "--work", str(tmp_path), "--json", str(figures)])
    out = capsys.readouterr().out
    assert re.search(r"\(a\) one report: .*\n.*\(b\) a report every step: .*\n.*whole run a/b = \d+\.\d{3}; "
                     r"one report costs [+-]\d+\.\d ms", out), out
    saved = json.loads(figures.read_text())
    assert saved["ratio_a_over_b"] > 0 and len(saved["one_report_s"]) == len(saved["report_every_step_s"]) == 1
    # each run is a real pretraining run: its own directory, the checkpoint at the end, its reports
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name.split("-")[0] for r in runs] == ["report1", "report3"]
    reports = {r.name.split("-")[0]: len((r / "metrics.jsonl").read_text().splitlines()) for r in runs}
    assert reports == {"report1": 3, "report3": 1}
    assert all((r / "checkpoint_000000003" / "checkpoint.pt.sha256").is_file() for r in runs)
