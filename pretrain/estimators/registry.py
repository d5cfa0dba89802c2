"""A registry of bounds by name, so configs and command lines can pick one with a string."""
from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Class decorator: make ``build(name)`` construct the decorated module."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return wrap


def names() -> list[str]:
    """Names of the registered bounds, in registration order."""
    return list(_REGISTRY)


def build(name: str, **kwargs) -> nn.Module:
    """Construct the bound called ``name`` with its keyword options."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)
