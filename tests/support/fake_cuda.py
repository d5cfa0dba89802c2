"""A node's GPUs as torch.cuda shows them to one process, for the CPU tests of the GPU-only code.

``FakeCuda(monkeypatch, ...)`` replaces the ``torch.cuda`` functions that code calls (availability,
counts, current device, capability, name, per-device RNG state) by ones answering for ``count``
devices; a device index out of range raises as torch's does. No kernel runs: the code under test
only asks questions and moves RNG states.
"""
from __future__ import annotations

import torch


class FakeCuda:
    def __init__(self, monkeypatch, count: int = 1, current: int = 0, capability: tuple[int, int] = (9, 0),
                 name: str = "NVIDIA H100 80GB HBM3", available: bool = True):
        self.count, self.current = count, current
        # a distinct RNG state per device (torch's CUDA state is a uint8 tensor of 16 bytes)
        self.states = [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(count)]
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: available)
        monkeypatch.setattr(cuda, "device_count", lambda: count if available else 0)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(cuda, "get_rng_state", self.get_rng_state)
        monkeypatch.setattr(cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        # torch's set_rng_state_all: set_rng_state(state, i) for each i
        monkeypatch.setattr(cuda, "set_rng_state_all",
                            lambda states: [self.set_rng_state(s, i) for i, s in enumerate(states)])

    def _index(self, device) -> int:
        index = self.current if device in (None, "cuda") else (
            device.index if isinstance(device, torch.device) else int(device))
        if not 0 <= index < self.count:
            raise IndexError(f"CUDA device {index} out of range: this process sees {self.count}")
        return index

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        return self.states[self._index(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        self.states[self._index(device)] = state.clone()
