"""BMI benchmark tasks: every sampler against its closed-form MI, by Monte Carlo over the exact
densities, by a nearest-neighbour (KSG) estimate, or by checking that its maps are invertible."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from experiments.mi_bmi import tasks as bmi

N = 100_000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mc_check(log_ratio: torch.Tensor, truth: float) -> None:
    """The mean of log p(x,y)/(p(x)p(y)) over samples is within 4 standard errors (and 0.03) of ``truth``."""
    mean, se = float(log_ratio.mean()), float(log_ratio.std() / math.sqrt(len(log_ratio)))
    assert abs(mean - truth) < max(4 * se, 0.03), (mean, se, truth)


def _student_log_density(z: torch.Tensor, disp: torch.Tensor, df: int) -> torch.Tensor:
    """The multivariate Student-t log density, written out: z [n, d]."""
    d = z.shape[1]
    q = (z * torch.linalg.solve(disp, z.T).T).sum(1)
    return (math.lgamma((df + d) / 2) - math.lgamma(df / 2) - d / 2 * math.log(df * math.pi)
            - 0.5 * torch.linalg.slogdet(disp)[1] - (df + d) / 2 * torch.log1p(q / df))


@pytest.mark.parametrize("name", ["1v1-normal-0.75", "multinormal-dense-5-5", "multinormal-sparse-25-25"])
def test_normal_samplers_match_the_closed_form(name):
    task = bmi.TASKS[name]
    x, y = task.sample_base(N, _gen())
    dx, cov = task.dim_x, task.cov
    joint = MultivariateNormal(torch.zeros(len(cov), dtype=torch.float64), cov).log_prob(torch.cat([x, y], 1))
    px = MultivariateNormal(torch.zeros(dx, dtype=torch.float64), cov[:dx, :dx]).log_prob(x)
    py = MultivariateNormal(torch.zeros(len(cov) - dx, dtype=torch.float64), cov[dx:, dx:]).log_prob(y)
    _mc_check(joint - px - py, task.mi)


@pytest.mark.parametrize("name", ["1v1-student-t-dof1-0.75", "student-t-dense-2-2-dof1", "student-t-dense-5-5-dof3"])
def test_student_t_samplers_match_the_closed_form(name):
    task = bmi.TASKS[name]
    x, y = task.sample_base(N, _gen(1))
    dx, disp, df = task.dim_x, task.cov, task.df
    ratio = (_student_log_density(torch.cat([x, y], 1), disp, df) - _student_log_density(x, disp[:dx, :dx], df)
             - _student_log_density(y, disp[dx:, dx:], df))
    _mc_check(ratio, task.mi)


def test_student_t_with_identity_dispersion_still_has_information():
    assert bmi.student_correction(1, 1, 1) > 0.1
    assert bmi.student_correction(1000, 2, 2) < 1e-3  # ν → ∞: the normal, where Σ = I means independence


@pytest.mark.parametrize("epsilon", [0.1, 0.75])
def test_additive_uniform_matches_the_closed_form(epsilon):
    task = bmi.TASKS[f"1v1-additive-{epsilon}"]
    x, y = task.sample(N, _gen(2))
    assert float(((y - x).abs() <= epsilon).double().mean()) == 1.0
    p_y = (torch.clamp(y + epsilon, max=1.0) - torch.clamp(y - epsilon, min=0.0)) / (2 * epsilon)  # U(0,1) ∗ U(−ε, ε)
    _mc_check(-math.log(2 * epsilon) - torch.log(p_y).squeeze(1), task.mi)


@pytest.mark.parametrize("name", ["1v1-uniform-margins-0.75", "1v1-bimodal-0.75", "1v1-wiggly-0.75",
                                  "1v1-half-cube-0.75", "1v1-asinh-student-t-dof1-0.75"])
def test_one_dimensional_transformed_tasks_keep_their_mi_by_a_ksg_estimate(name):
    from sklearn.feature_selection import mutual_info_regression

    task = bmi.TASKS[name]
    x, y = task.sample(5000, _gen(3))
    est = mutual_info_regression(x.numpy(), y[:, 0].numpy(), n_neighbors=5, random_state=0)[0]
    assert abs(est - task.mi) < 0.06, (est, task.mi)


@pytest.mark.parametrize("fn", [bmi.normal_cdf, bmi.half_cube, bmi.wiggly_x, bmi.wiggly_y, bmi.bimodal_x, bmi.bimodal_y, torch.asinh])
def test_one_dimensional_maps_are_strictly_increasing(fn):
    t = torch.linspace(-6, 6, 20001, dtype=torch.float64)
    assert bool((fn(t).diff() > 0).all())


def test_bimodal_map_inverts_the_mixture_cdf():
    u = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    for icdf in (bmi.BIMODAL_X, bmi.BIMODAL_Y):
        assert torch.allclose(icdf.cdf(icdf(u)), u, atol=1e-9)


def test_spiral_preserves_the_norm_and_is_inverted_by_the_opposite_rotation():
    x = torch.randn(1000, 5, generator=_gen(4), dtype=torch.float64)
    out = bmi.spiral()(x)
    assert torch.allclose(out.norm(dim=1), x.norm(dim=1))
    assert not torch.allclose(out, x)
    assert torch.allclose(bmi.spiral(inverse=True)(out), x)


def test_every_task_samples_finite_pairs_of_its_dimensions():
    for name, task in bmi.TASKS.items():
        x, y = task.sample(200, _gen(5))
        assert x.shape == (200, task.dim_x) and y.shape == (200, task.dim_y), name
        assert bool(torch.isfinite(x).all() and torch.isfinite(y).all()), name
        assert 0 < task.mi < 10, name


def test_covariances_are_positive_definite_with_unit_diagonal():
    for d in (2, 5, 25):
        for cov in (bmi.dense_covariance(d, d), bmi.sparse_covariance(d, d)):
            assert torch.allclose(cov.diagonal(), torch.ones(2 * d, dtype=torch.float64))
            assert float(torch.linalg.eigvalsh(cov).min()) > 0


def test_runner_gives_every_bound_an_interval_around_its_estimate(tmp_path):
    from experiments.mi_bmi import benchmark

    rows = benchmark.main(["--quick", "--out", str(tmp_path), "tasks=[1v1-normal-0.75]", "estimators=[eta-mine,a-mine]", "steps=20"])
    assert [r["estimator"] for r in rows] == ["eta-mine", "a-mine"]
    for r in rows:
        assert r["low"] <= r["estimate"] <= r["high"] and r["batches"] == 4
        assert r["error"] == pytest.approx(r["estimate"] - bmi.TASKS["1v1-normal-0.75"].mi)
    assert "| 1v1-normal-0.75 | 0.413 |" in (tmp_path / "results.md").read_text()


def test_runner_refuses_an_unknown_task_by_name():
    from experiments.mi_bmi import benchmark

    with pytest.raises(ValueError, match="unknown task.*nope"):
        benchmark.load_config(["tasks=[nope]"])


def test_runner_continues_the_rows_already_in_its_results(tmp_path):
    import json

    from experiments.mi_bmi import benchmark

    kept = {"task": "1v1-normal-0.75", "estimator": "eta-mine", "seed": 0, "true_mi": 0.41, "batches": 4,
            "estimate": 0.123, "low": 0.1, "high": 0.2, "error": -0.29}
    (tmp_path / "results.json").write_text(json.dumps([kept]))
    rows = benchmark.main(["--quick", "--out", str(tmp_path), "tasks=[1v1-normal-0.75,multinormal-sparse-2-2]",
                           "estimators=[eta-mine]", "steps=10"])
    assert rows[0] == kept  # not trained again
    assert [r["task"] for r in rows] == ["1v1-normal-0.75", "multinormal-sparse-2-2"]


def test_a_bound_whose_read_out_overflows_on_a_held_out_batch_is_diverged_and_the_run_goes_on():
    """Student-t with one degree of freedom (Cauchy tails), seed 3: JSD's critic and scores stay finite but
    its read-out overflows on some held-out batches (a real crash of the full run before)."""
    from experiments.mi_bmi import benchmark

    cfg = benchmark.load_config(["estimators=[eta-mine,jsd]"])
    rows = benchmark.run_task(cfg, "1v1-student-t-dof1-0.75", 3)
    eta, jsd = rows
    assert math.isfinite(eta["estimate"]) and not eta.get("diverged")
    assert jsd["diverged"] and 1 <= jsd["nonfinite_batches"] <= jsd["batches"] and math.isnan(jsd["estimate"])
    assert "diverged (1/1)" in benchmark.markdown(rows, cfg)


def test_a_cell_over_seeds_averages_the_finite_ones_and_counts_the_diverged():
    from experiments.mi_bmi import benchmark

    row = {"task": "t", "estimator": "jsd", "true_mi": 1.0}
    rows = [{**row, "seed": 0, "estimate": 0.9, "low": 0.8, "high": 1.0, "error": -0.1},
            {**row, "seed": 1, "estimate": 1.1, "low": 1.0, "high": 1.2, "error": 0.1},
            {**row, "seed": 2, "estimate": float("nan"), "low": float("nan"), "high": float("nan"),
             "error": float("nan"), "diverged": True}]
    cfg = benchmark.load_config(["seeds=3"])
    assert "| t | 1.000 | 1.00 ±0.14 [0.90, 1.10] (+0.00); diverged (1/3) |" in benchmark.markdown(rows, cfg)
    assert "| t | 1.000 | diverged (1/1) |" in benchmark.markdown(rows[2:], cfg)


def test_a_continued_run_adds_its_launch_to_the_earlier_ones(tmp_path):
    import json

    from experiments.mi_bmi import benchmark

    args = ["--quick", "--out", str(tmp_path), "tasks=[1v1-normal-0.75]", "estimators=[eta-mine]", "steps=10"]
    benchmark.main(args)
    benchmark.main([*args[:-2], "tasks=[1v1-normal-0.75,multinormal-sparse-2-2]", "estimators=[eta-mine]", "steps=10"])
    meta = json.loads((tmp_path / "run.json").read_text())
    assert [x["trained"] for x in meta["launches"]] == [1, 1]
    assert meta["cpu_s"] == pytest.approx(sum(x["cpu_s"] for x in meta["launches"]), abs=0.2)
    assert "over 2 launch(es)" in (tmp_path / "results.md").read_text()
