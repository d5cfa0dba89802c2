"""estimators.evaluate / bootstrap_interval: an estimate with a confidence interval over evaluation batches."""
from __future__ import annotations

import math

import pytest
import torch

from pretrain import estimators


def test_interval_of_a_constant_has_zero_width():
    iv = estimators.bootstrap_interval(torch.full((10,), 1.5))
    assert iv == estimators.Interval(1.5, 1.5, 1.5, 10)


def test_interval_width_matches_the_standard_error_and_covers_the_mean():
    """For normal per-batch values the 95% bootstrap interval is about mean ± 1.96·σ/√K (a slow, obvious copy)."""
    values = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0 + 3.0
    iv = estimators.bootstrap_interval(values, resamples=4000)
    se = float(values.std()) / math.sqrt(len(values))
    assert iv.low < iv.estimate < iv.high
    assert iv.estimate == pytest.approx(float(values.mean()))
    assert (iv.high - iv.low) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_evaluate_reads_the_bound_on_each_batch_in_eval_mode():
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 16, generator=gen) + 3 * torch.eye(16) for _ in range(8)]
    dv = estimators.build("dv-mine-ema")
    dv(batches[0])  # training call: starts the moving average
    before = dv.log_ema.clone()
    iv = estimators.evaluate(dv, [{"scores": s} for s in batches])
    per_batch = [float(estimators.build("dv-mine")(s).mi) for s in batches]
    assert iv.estimate == pytest.approx(sum(per_batch) / 8)
    assert min(per_batch) <= iv.low <= iv.estimate <= iv.high <= max(per_batch)
    assert torch.equal(dv.log_ema, before) and dv.training  # evaluation left the average and the mode alone


def test_evaluate_passes_every_argument_of_a_batch():
    scores = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    amine = estimators.build("a-mine")
    iv = estimators.evaluate(amine, [{"scores": scores, "log_baseline": torch.zeros(6)}])
    assert iv.estimate == pytest.approx(float(amine(scores, log_baseline=torch.zeros(6)).mi)) and iv.batches == 1


@pytest.mark.parametrize("values, level, message", [([], 0.95, "finite per-batch"), ([1.0, float("nan")], 0.95, "finite per-batch"),
                                                    ([1.0, 2.0], 1.5, "level must be")])
def test_bad_input_is_one_clear_error(values, level, message):
    with pytest.raises(ValueError, match=message):
        estimators.bootstrap_interval(torch.tensor(values), level=level)


def test_read_out_returns_an_overflowing_batch_as_it_is():
    """Finite scores whose exponential overflows (one marginal pair scored 1e30): read_out gives the
    non-finite value for that batch (the caller decides), evaluate refuses it in one line."""
    eta = estimators.build("eta-mine")
    tame, wild = torch.zeros(4, 4), torch.zeros(4, 4)
    wild[1, 0] = 1e30
    values = estimators.read_out(eta, [{"scores": tame}, {"scores": wild}])
    assert values.dtype == torch.float64 and math.isfinite(values[0]) and not math.isfinite(values[1])
    with pytest.raises(ValueError, match="need finite per-batch estimates"):
        estimators.evaluate(eta, [{"scores": tame}, {"scores": wild}])
