"""Test-wide settings: one intra-op thread (2-core machine; Ray workers and data loaders share it)."""
import torch

torch.set_num_threads(1)
