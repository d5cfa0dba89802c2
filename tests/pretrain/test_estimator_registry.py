"""The estimator registry declares what each bound needs; the bounds agree with their declarations."""
from __future__ import annotations

import inspect

import pytest

from pretrain import estimators


@pytest.mark.parametrize("name", estimators.names())
def test_declared_capabilities_match_the_bound(name):
    bound, declared = estimators.build(name), estimators.capabilities(name)
    assert declared.has_eta == isinstance(bound, estimators.EtaMINE) == hasattr(bound, "eta")
    assert declared.takes_baseline == ("log_baseline" in inspect.signature(bound.forward).parameters)


def test_unknown_bound_is_one_line():
    with pytest.raises(ValueError, match="unknown estimator 'nope'; known: eta-mine"):
        estimators.capabilities("nope")
