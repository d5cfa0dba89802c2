"""A registry of bounds by name, so configs and command lines can pick one with a string, with what
each bound needs from its caller declared beside it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class Capabilities:
    """What a bound needs from its caller beyond ``(scores, masks)``."""

    has_eta: bool = False  # an η parameter the caller optimises (eta_parameters(), n_critic, eta_step)
    takes_baseline: bool = False  # forward takes ``log_baseline`` [M], a head the task builds


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], Capabilities]] = {}


def register(name: str, *, has_eta: bool = False, takes_baseline: bool = False):
    """Class decorator: make ``build(name)`` construct the decorated module, with its capabilities."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} registered twice")
        _REGISTRY[name] = cls, Capabilities(has_eta, takes_baseline)
        return cls

    return wrap


def names() -> list[str]:
    """Names of the registered bounds, in registration order."""
    return list(_REGISTRY)


def _entry(name: str) -> tuple[Callable[..., nn.Module], Capabilities]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def capabilities(name: str) -> Capabilities:
    """What the bound called ``name`` needs from its caller (see :class:`Capabilities`)."""
    return _entry(name)[1]


def build(name: str, **kwargs) -> nn.Module:
    """Construct the bound called ``name`` with its keyword options."""
    return _entry(name)[0](**kwargs)
