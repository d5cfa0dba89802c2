"""The Gaussian MI benchmark: true MI, batched critics, the estimator bank and both protocols' outputs."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import multivariate_normal

from experiments.mi_gaussian import benchmark as mg
from experiments.mi_gaussian import plots
from experiments.mi_gaussian.critics import BatchedMLP, ConcatCritic, SeparableCritic
from pretrain import estimators

# ---------------------------------------------------------------- Gaussians with known MI


@pytest.mark.parametrize("dim", [1, 3, 10])
def test_gaussian_mi_matches_entropies(dim):
    mean, cov = mg.random_gaussian(dim, torch.Generator().manual_seed(dim))
    c = cov.numpy()
    entropy = lambda m: multivariate_normal(cov=m).entropy()  # noqa: E731
    expected = entropy(c[:dim, :dim]) + entropy(c[dim:, dim:]) - entropy(c)
    assert mg.gaussian_mi(cov, dim) == pytest.approx(expected, rel=1e-9)
    assert torch.allclose(cov, cov.T) and torch.linalg.eigvalsh(cov).min() >= 0.1 - 1e-9


@pytest.mark.parametrize("level", [0.5, 2.0, 10.0])
def test_staircase_rho_gives_the_level(level):
    d = 20
    rho = mg.staircase_rho(level, d)
    eye = torch.eye(d, dtype=torch.float64)
    cov = torch.cat([torch.cat([eye, rho * eye], 1), torch.cat([rho * eye, eye], 1)])
    assert mg.gaussian_mi(cov, d) == pytest.approx(level, rel=1e-9)
    x, y = mg.sample_correlated(20000, d, rho, torch.Generator().manual_seed(0))
    assert (x * y).mean().item() == pytest.approx(rho, abs=0.01)
    assert y.var().item() == pytest.approx(1.0, abs=0.02)


def test_samples_follow_mean_and_covariance():
    mean, cov = mg.random_gaussian(3, torch.Generator().manual_seed(1))
    z = mg.sample_gaussian(mean, cov, (40000,), torch.Generator().manual_seed(2)).double()
    assert torch.allclose(z.mean(0), mean, atol=0.03)
    assert torch.allclose(torch.cov(z.T), cov, atol=0.04)


def test_level_stats_identity():
    trace = np.array([1.0, 2.0, 4.0, 5.0])
    s = mg.level_stats(trace, 2.0)
    assert s["bias"] == pytest.approx(1.0) and s["var"] == pytest.approx(2.5)
    assert s["mse"] == pytest.approx(s["bias"] ** 2 + s["var"])


# ---------------------------------------------------------------- critics


def _mlp(x, weights, biases):
    for i, (w, b) in enumerate(zip(weights, biases)):
        x = F.linear(x, w.T, b.reshape(-1))
        x = torch.relu(x) if i < len(weights) - 1 else x
    return x


def test_concat_critic_is_an_mlp_on_every_concatenated_pair():
    torch.manual_seed(0)
    critic = ConcatCritic(copies=3, dim=4, hidden=8, layers=2)
    x, y = torch.randn(3, 5, 4), torch.randn(3, 6, 4)
    scores = critic.scores(x, y)
    assert scores.shape == (3, 5, 6)
    for c in range(3):
        weights = [torch.cat([critic.w_x[c], critic.w_y[c]]), critic.w_hidden[0][c], critic.w_out[c]]
        biases = [critic.b_in[c], critic.b_hidden[0][c], critic.b_out[c]]
        pairs = torch.cat([x[c][:, None].expand(5, 6, 4), y[c][None].expand(5, 6, 4)], -1)
        assert torch.allclose(scores[c], _mlp(pairs, weights, biases)[..., 0], atol=1e-5)
    # Features: the score is the output layer on them, for aligned pairs and for the full grid.
    phi = critic.pair_features(x[:, :5], y[:, :5])
    assert torch.allclose((phi @ critic.w_out + critic.b_out)[..., 0], scores.diagonal(dim1=1, dim2=2), atol=1e-5)
    grid = critic.grid_features(x, y)
    assert torch.allclose((grid @ critic.w_out[:, None] + critic.b_out[:, None])[..., 0], scores, atol=1e-5)
    assert torch.allclose(critic.pair_features(x[1:2, :5], y[1:2, :5], slice(1, 2)), phi[1:2], atol=1e-6)


def test_separable_critic_and_its_features():
    torch.manual_seed(0)
    critic = SeparableCritic(copies=2, dim=3, hidden=8, embed=4)
    x, y = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    scores = critic.scores(x, y)
    for c in range(2):
        gx = _mlp(x[c], [w[c] for w in critic.g.weights], [b[c] for b in critic.g.biases])
        hy = _mlp(y[c], [w[c] for w in critic.h.weights], [b[c] for b in critic.h.biases])
        assert torch.allclose(scores[c], gx @ hy.T, atol=1e-5)
    assert torch.allclose(critic.pair_features(x, y).sum(-1), scores.diagonal(dim1=1, dim2=2), atol=1e-5)
    assert torch.allclose(critic.grid_features(x, y).sum(-1), scores, atol=1e-5)


def test_batched_copies_train_like_independent_networks():
    """One Adam over [C, ...] weights == C separate networks with their own Adam."""
    torch.manual_seed(0)
    both = BatchedMLP(copies=2, d_in=3, hidden=5, d_out=1)
    alone = BatchedMLP(copies=1, d_in=3, hidden=5, d_out=1)
    alone.load_state_dict({k: v[1:2].clone() for k, v in both.state_dict().items()})
    opt_both, opt_alone = torch.optim.Adam(both.parameters(), lr=1e-2), torch.optim.Adam(alone.parameters(), lr=1e-2)
    for _ in range(5):
        x = torch.randn(2, 7, 3)
        for net, opt, inp in ((both, opt_both, x), (alone, opt_alone, x[1:2])):
            opt.zero_grad()
            net(inp).pow(2).sum().backward()  # a sum over copies: each copy gets only its own gradient
            opt.step()
    for (name, a), b in zip(both.state_dict().items(), alone.state_dict().values()):
        assert torch.allclose(a[1:2], b, atol=1e-6), name


# ---------------------------------------------------------------- the estimator bank


def test_bank_calls_each_copy_with_its_own_scores_and_baseline():
    torch.manual_seed(0)
    names = ["eta-mine", "a-mine", "infonce"]
    bank = mg.EstimatorBank(names, runs=2, dim=3, baseline_hidden=4)
    with torch.no_grad():
        bank.bounds[0].eta.fill_(0.3)
    scores, y = torch.randn(6, 5, 5), torch.randn(2, 5, 3)
    pos, neg = mg.diagonal_masks(5)
    loss, mi = bank(scores, y, pos, neg)
    log_baseline = bank.baseline(y)[..., 0]
    expected = []
    for c in range(6):
        run, name = divmod(c, 3)
        extra = {"log_baseline": log_baseline[run]} if names[name] == "a-mine" else {}
        expected.append(bank.bounds[c](scores[c], **extra))
    assert torch.allclose(mi, torch.stack([e.mi for e in expected]))
    assert torch.allclose(loss, torch.stack([e.loss for e in expected]).sum())
    assert mi[0] != mi[3]  # eta differs between the runs' eta-mine copies


def test_paired_initialisation_shares_weights_within_a_run_only():
    critic = ConcatCritic(copies=6, dim=3, hidden=4)
    mg.pair_initialisation(critic, runs=2)
    for p in critic.parameters():
        run = p.view(2, 3, *p.shape[1:])
        assert torch.equal(run[:, 0], run[:, 1]) and torch.equal(run[:, 0], run[:, 2])
        assert not torch.equal(run[0, 0], run[1, 0])


def test_optimisers_split_eta_from_the_critic():
    critic = SeparableCritic(copies=2, dim=2, hidden=4, embed=2)
    bank = mg.EstimatorBank(["eta-mine", "a-mine"], runs=1, dim=2, baseline_hidden=4)
    opt, opt_eta = mg.make_optimisers(critic, bank, lr=5e-4, lr_eta=1e-2)
    eta_ids = {id(p) for g in opt_eta.param_groups for p in g["params"]}
    assert eta_ids == {id(bank.bounds[0].eta)} and opt_eta.param_groups[0]["lr"] == 1e-2
    critic_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert critic_ids == {id(p) for p in list(critic.parameters()) + list(bank.baseline.parameters())}
    assert opt.param_groups[0]["lr"] == 5e-4


# ---------------------------------------------------------------- protocols end to end


def test_eta_mine_learns_a_2d_gaussian():
    """A short paper-protocol run: η-MINE and its convex refit end near the true MI, η moves."""
    cfg = mg.PaperConfig(estimators=["eta-mine", mg.CONVEX], dims=[2], runs=2, steps=600, batch=64, hidden=32, n_train=2000, n_test=500, eval_every=600, convex_shifts=5)
    rows, curves = mg.run_paper(cfg, progress=False)
    truth = rows[0]["true_mi"]
    assert truth > 0.3
    for row in rows:
        assert len(row["estimates"]) == 2
        assert row["mean"] == pytest.approx(truth, abs=0.2), row
        assert row["mean"] <= truth + 0.1  # a lower bound on held-out data, up to sampling noise


def _read(out):
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text(), json.loads((out / "run.json").read_text())


def test_paper_cli_writes_everything(tmp_path):
    mg.main(["--no-progress", "--out", str(tmp_path), "dims=[2,3]", "runs=3", "steps=12", "batch=16", "eval_every=6", "estimators=[eta-mine,dv-mine]"])
    rows, md, meta = _read(tmp_path)
    names = ("eta-mine", "eta-mine/refit", "dv-mine")
    assert [(r["estimator"], r["dim"]) for r in rows] == [(n, d) for d in (2, 3) for n in names]
    for r in rows:
        assert set(r) == {"estimator", "dim", "true_mi", "estimates", "mean", "std"}
        assert len(r["estimates"]) == 3 and all(math.isfinite(v) for v in r["estimates"])
        assert r["mean"] == pytest.approx(np.mean(r["estimates"])) and r["std"] == pytest.approx(np.std(r["estimates"], ddof=1))
    by = {(r["estimator"], r["dim"]): r["estimates"] for r in rows}
    for d in (2, 3):  # η in closed form on the test pairs: never looser
        assert all(a >= b - 1e-9 for a, b in zip(by[("eta-mine/refit", d)], by[("eta-mine", d)]))
    assert "| eta-mine/refit |" in md and "d = 3" in md and "runs=3" in md and "Paired differences (bound − dv-mine" in md
    assert meta["config"]["runs"] == 3 and meta["wall_s"] >= 0
    curves = json.loads((tmp_path / "curves.json").read_text())
    gap = curves["2"]["eta-mine"]["eta_minus_eta_star"]
    assert curves["2"]["eta-mine"]["step"] == [6, 12] and len(gap) == 2 and len(gap[0]) == 3
    assert curves["2"]["eta-mine/refit"]["runs"][-1] == by[("eta-mine/refit", 2)]
    pngs = {"paper_estimates.png", "paper_convergence.png", "paper_eta_gap.png"}
    assert {p.name for p in tmp_path.glob("*.png")} == pngs
    for p in tmp_path.glob("*.png"):  # the committed JSON is enough to redraw every figure
        p.unlink()
    plots.main([str(tmp_path)])
    assert {p.name for p in tmp_path.glob("*.png")} == pngs
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert not (tmp_path / "results.partial.json").exists()


def test_paper_protocol_is_reproducible_from_its_seed():
    cfg = mg.PaperConfig(estimators=["eta-mine", "smile", mg.CONVEX], dims=[2], runs=2, steps=10, batch=16, hidden=8, n_train=200, n_test=50, eval_every=5, convex_shifts=2)
    rows, curves = mg.run_paper(cfg, progress=False)
    assert mg.run_paper(cfg, progress=False) == (rows, curves)
    assert mg.run_paper(dataclasses.replace(cfg, seed=1), progress=False)[0] != rows
    assert curves[2]["eta-mine"]["step"] == [5, 10]


def test_staircase_writes_bias_variance_mse(tmp_path):
    mg.main(["--protocol", "staircase", "--quick", "--out", str(tmp_path), "--no-progress", "steps=20", "estimators=[eta-mine,infonce]"])
    rows, md, meta = _read(tmp_path)
    levels = mg.QUICK["staircase"]["levels"]
    series = ["eta-mine", "eta-mine/refit", "infonce"]
    assert [(r["critic"], r["estimator"], r["level"]) for r in rows] == [
        (k, n, i + 1) for k in ("concat", "separable") for n in series for i in range(len(levels))
    ]
    traces = json.loads((tmp_path / "traces.json").read_text())
    assert traces["series"] == series and traces["every"] == 10
    for r in rows:
        assert r["true_mi"] == levels[r["level"] - 1]
        blocks = traces["critics"][r["critic"]][r["estimator"]][r["level"] * 2 - 2 : r["level"] * 2]  # 10-step means
        assert r["mean"] == pytest.approx(np.mean(blocks), abs=1e-4)
        assert r["mse"] == pytest.approx(r["bias"] ** 2 + r["var"], rel=1e-6)
    for k in ("concat", "separable"):
        refit, plain = traces["critics"][k]["eta-mine/refit"], traces["critics"][k]["eta-mine"]
        assert all(a >= b - 1e-3 for a, b in zip(refit, plain))  # per batch: never looser (10-step means, rounded)
    assert "**concat critic**" in md and "| eta-mine/refit |" in md and (tmp_path / "staircase.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["estimators=[eta-mine,nope]"], "unknown estimator(s) nope"),
        (["--protocol", "staircase", "estimators=[eta-mine-convex]"], "unknown estimator(s) eta-mine-convex"),
        (["--protocol", "staircase", "runs=3"], "Key 'runs' not in 'StaircaseConfig'"),
        (["--protocol", "staircase", "dim=[2,3]"], "dim"),
        (["dims=[2,x]"], "dims"),
        (["batch=6000"], "exceeds the 5000 training samples"),
        (["runs"], "expected key=value"),
        (["--protocol", "staircase", "critics=[conv]"], "unknown critic(s) conv"),
    ],
)
def test_bad_arguments_give_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        mg.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_help_shows_the_dataclass_defaults(capsys):
    with pytest.raises(SystemExit):
        mg.main(["--help"])
    out = capsys.readouterr().out
    assert f"runs: {mg.PaperConfig().runs}" in out and f"window: {mg.StaircaseConfig().window}" in out


def test_every_registered_bound_is_in_the_default_protocols():
    assert mg.PaperConfig().estimators == estimators.names() + [mg.CONVEX]
    assert mg.StaircaseConfig().estimators == estimators.names()
