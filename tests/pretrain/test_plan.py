"""The cost plan: FLOPs counted on the config's real batch shape, arithmetic that adds up, no Ray."""
import pytest
import torch

from pretrain.config import load_config
from pretrain.plan import DEFAULT_TFLOPS, plan, step_flops

INFOMAX = ["data.shards=/nonexistent/shards", "task.kind=infomax", "task.estimator=eta-mine",
           "model.encoder=dcgan", "model.depth=2", "data.batch_size=16", "train.steps=1000"]


def test_step_flops_follow_the_batch_shape():
    small = step_flops(load_config(None, INFOMAX))
    large = step_flops(load_config(None, INFOMAX + ["data.batch_size=32"]))
    # convolutions scale with the batch; the B x B critic matrix a little faster
    assert 2.0 <= large / small < 2.2
    jigsaw = ["data.shards=/nonexistent/shards", "task.kind=jigsaw-mi", "task.estimator=eta-mine",
              "model.encoder=dcgan", "model.depth=2", "model.kwargs.image_size=64", "data.images_per_batch=2",
              "data.perms_per_image=4", "data.num_permutations=10"]
    tiles, patches = (step_flops(load_config(None, jigsaw + [f"data.unique_tiles={u}"])) for u in ("true", "false"))
    assert tiles < patches / 2  # the encoder sees each tile once instead of once per permutation


def test_plan_adds_up_and_scales_with_workers():
    one = plan(load_config(None, INFOMAX), tflops=100.0, data_seconds=0.2)
    two = plan(load_config(None, INFOMAX + ["train.num_workers=2"]), tflops=100.0, data_seconds=0.2)
    assert one.data_source == "synthetic" and one.data_images_per_s_per_core > 0
    assert one.total_pflops == pytest.approx(one.flops_per_step * 1000 / 1e15)
    assert one.hours_at_tflops == pytest.approx(one.total_pflops * 1e15 / 100e12 / 3600)
    assert one.images_per_s_needed == pytest.approx(100e12 / one.flops_per_step * 16)
    assert two.flops_per_step == pytest.approx(2 * one.flops_per_step)
    assert two.images_per_step == 32 and two.data_cores == 2


def test_cli_plan_prints_the_cost_both_bounds_and_the_local_fit_without_ray_or_shards(capsys, tmp_path):
    import ray

    from pretrain.__main__ import main
    from pretrain.preflight import local_cpus

    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  steps: 1000\n")
    assert main(["--config", str(config), "--plan", "--tflops", "50", *INFOMAX[:-1]]) == 0
    line, bounds, *notes, fit = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("tiny: infomax/eta-mine") and "1,000 steps" in line and "at 50 TFLOP/s" in line, line
    assert bounds.startswith("  bounds: accelerator ") and " | data " in bounds and "at least" in bounds, bounds
    assert notes == ([] if torch.cuda.is_available() else [NO_GPU_NOTE]), notes
    assert fit == f"a local run here fits this machine's {local_cpus()} CPUs as configured"
    assert not ray.is_initialized()
    assert DEFAULT_TFLOPS == pytest.approx(0.4 * 989)


NO_GPU_NOTE = ("  no GPU on this machine, so the accelerator bound is not this machine's: "
               "--plan --measure times a few steps on its CPU")


def test_plan_measure_times_steps_here_and_flags_what_a_local_run_cannot_fit(capsys):
    """``--measure`` estimates the run from steps timed on this CPU; a config whose loader processes
    do not fit this machine's CPUs is fitted, one whose ranks do not fit is flagged, before any Ray."""
    from pretrain.__main__ import main
    from pretrain.preflight import local_cpus

    cpus = local_cpus()
    assert main(["--config", "configs/demo_infomax_eta.yaml", "--plan", "--measure", *INFOMAX,
                 f"data.loader_workers={cpus}", "train.num_workers=1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    measured = next(x for x in out if x.startswith("  measured on this machine's CPU: "))
    seconds = float(measured.split(": ")[1].split(" s a step")[0])
    assert seconds > 0 and "for 1,000 steps" in measured, measured
    assert out[-1] == (f"a local run here: this machine has {cpus} CPUs: data.loader_workers={cpus} lowered to "
                       f"{cpus - 1} so that 1 rank(s) of train.threads_per_worker + data.loader_workers CPUs fit")
    assert main(["--config", "configs/demo_infomax_eta.yaml", "--plan", *INFOMAX, f"train.num_workers={cpus + 1}"]) == 0
    fit = capsys.readouterr().out.strip().splitlines()[-1]
    assert fit.startswith(f"a local run here cannot start: train.num_workers={cpus + 1} x train.threads_per_worker=1 "
                          f"need {cpus + 1} CPUs and this machine has {cpus}"), fit


def test_plan_module_prints_a_table_of_many_configs_or_one_line_error(capsys, tmp_path):
    from pretrain.plan import MARKDOWN_HEADER, main

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("data:\n  shards: /nonexistent\n  batch_size: 16\ntask:\n  kind: infomax\n  estimator: eta-mine\n"
                 "model:\n  encoder: dcgan\n  depth: 2\ntrain:\n  steps: 1000\n")
    b.write_text(a.read_text().replace("steps: 1000", "steps: 2000\n  num_workers: 2"))
    assert main([str(a), str(b), "--markdown", "--tflops", "100"]) == 0
    header, rule, row_a, row_b = capsys.readouterr().out.strip().splitlines()
    assert header == MARKDOWN_HEADER.format(tflops=100.0) and rule.count("---") == header.count(" | ") + 1
    assert row_a.startswith("| a | infomax/eta-mine | dcgan | 1 | 1,000 | ")
    assert row_b.startswith("| b | infomax/eta-mine | dcgan | 2 | 2,000 | ")
    b.write_text(a.read_text().replace("steps: 1000", "steps: 0"))
    assert main([str(a), str(b)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "\n" not in err.strip() and err.startswith(f"config error: {b}: ") and "train.steps" in err, err
