"""protocol=sweep: K heads in one pass equal K probes trained alone; the head is chosen on a held-out
share of the train split and the test split plays no part in the choice."""
import json

import pytest
import torch

from eval.linear import probe_one_seed, run_linear_eval
from eval.probe import batch_order_generator, make_probe, probe_step
from eval.sweep import holdout_split, score_head, sweep_grid, train_sweep


def _linear_task(n, dim=16, num_classes=4, seed=0):
    """Labels from a random linear map of Gaussian features: learnable, not trivially."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, num_classes, generator=g)
    x = torch.randn(n, dim, generator=g)
    return x, (x @ w + 0.5 * torch.randn(n, num_classes, generator=g)).argmax(1)


def _alone(x, y, num_classes, head, *, epochs, seed, batch_size):
    """The head trained by itself, step by step with eval.probe's one-head pieces (nn.Linear, torch Adam)."""
    probe, opt = make_probe(x.shape[1], num_classes, seed, head["lr"], weight_decay=head["weight_decay"], batchnorm=head["batchnorm"])
    order_gen = batch_order_generator(seed)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=order_gen)
        for i in range(0, x.shape[0], batch_size):
            probe_step(probe, opt, x[order[i : i + batch_size]], y[order[i : i + batch_size]])
    return probe


def test_each_head_of_the_sweep_equals_the_head_trained_alone():
    x, y = _linear_task(300)
    grid = sweep_grid([1e-3, 3e-2], [0.0, 0.05], [False, True])  # 8 heads: with and without BatchNorm
    res = train_sweep(x, y, 4, grid, epochs=3, seed=7, holdout_share=0.2, holdout_seed=1, batch_size=32, progress=False)
    fit, held = holdout_split(300, 0.2, 1)
    assert res["holdout"] == {"share": 0.2, "seed": 1, "num_fit": 240, "num_heldout": 60}
    for j, head in enumerate(grid):
        probe = _alone(x[fit], y[fit], 4, head, epochs=3, seed=7, batch_size=32)
        linear = probe[-1] if head["batchnorm"] else probe
        torch.testing.assert_close(res["weights"][j], linear.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res["biases"][j], linear.bias.detach(), rtol=1e-5, atol=1e-6)
        if head["batchnorm"]:
            torch.testing.assert_close(res["batchnorm"]["var"], probe[0].running_var)
        probe.eval()
        with torch.no_grad():
            heldout = 100.0 * float((probe(x[held]).argmax(1) == y[held]).float().mean())
        assert res["heads"][j]["heldout_top1"] == pytest.approx(heldout)
        assert score_head(res, j, x[held], y[held], (1,))[1] == pytest.approx(heldout)
    # the grid really spans different heads: weight decay and BatchNorm change the weights
    assert not torch.allclose(res["weights"][2], res["weights"][3]) and not torch.allclose(res["weights"][2], res["weights"][6])


def test_the_choice_never_reads_the_test_split():
    x, y = _linear_task(600)
    (x, xt), (y, yt) = x.split([400, 200]), y.split([400, 200])  # train and test of one task
    grid = sweep_grid([1e-4, 1e-2, 1e-1], [0.0, 1e-3])
    meta = {"num_classes": 4}
    kw = dict(epochs=4, lr=0.0, batch_size=50, progress=False, protocol="sweep",
              sweep={"grid": grid, "holdout_share": 0.25, "holdout_seed": 3})
    real = probe_one_seed({"meta": meta, "train": (x, y), "test": (xt, yt)}, 0, **kw)
    # a test split of noise with shuffled labels: the held-out scores and the choice do not move
    noise = probe_one_seed({"meta": meta, "train": (x, y), "test": (torch.randn(200, 16, generator=torch.Generator().manual_seed(9)), yt.flip(0))}, 0, **kw)
    assert real["heads"] == noise["heads"] and real["chosen"] == noise["chosen"]
    assert real["top1"] > 60.0 > 40.0 > noise["top1"]  # the test split is scored, after the choice
    best = max(h["heldout_top1"] for h in real["heads"])
    assert next(h for h in real["heads"] if h["name"] == real["chosen"])["heldout_top1"] == best
    assert len({h["heldout_top1"] for h in real["heads"]}) > 1  # a real choice among different heads


def test_bad_sweep_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="sweep_lrs is empty"):
        sweep_grid([], [0.0])
    with pytest.raises(ValueError, match="holdout_share must be in"):
        holdout_split(100, 1.0, 0)
    with pytest.raises(ValueError, match="leaves none to train on"):
        holdout_split(1, 0.5, 0)


def test_sweep_protocol_end_to_end_records_the_grid_and_the_choice(eval_world, tmp_path):
    res = run_linear_eval(eval_world["infomax_run"], eval_world["small"], epochs=2, seeds=2, out=tmp_path / "out", batch_size=16,
                          cache_dir=None, progress=False, protocol="sweep", sweep_lrs=[1e-3, 1e-2], sweep_weight_decays=[0.0],
                          sweep_batchnorm=[False, True], holdout_share=0.2, holdout_seed=5)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["protocol"] == "sweep" and written["lr"] is None
    assert [h["name"] for h in written["sweep"]["grid"]] == ["lr0.001-wd0", "lr0.01-wd0", "lr0.001-wd0-bn", "lr0.01-wd0-bn"]
    assert written["sweep"]["holdout"] == {"share": 0.2, "seed": 5, "num_fit": 48, "num_heldout": 12}
    for r in written["per_seed"]:
        assert len(r["heads"]) == 4 and all(0.0 <= h["heldout_top1"] <= 100.0 for h in r["heads"])
        assert r["chosen"] in [h["name"] for h in r["heads"]] and {"top1", "top5", "top10"} <= set(r)
    assert written["sweep"]["chosen"] == [r["chosen"] for r in written["per_seed"]]
    assert res["top1"]["mean"] == written["top1"]["mean"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "sweep of 4 heads, chosen on 12 held-out train samples" in md
