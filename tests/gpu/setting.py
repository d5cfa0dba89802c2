"""The setting every GPU test trains (:func:`jigsaw_overrides`) and the CUDA sync counter they share."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

def jigsaw_overrides(shards: Path | str, *extra: str) -> list[str]:
    """Jigsaw-MI with η-MINE on ResNet50, 2 images × 4 of 10 permutations a step, with the shipped GPU
    options on: bf16 autocast, channels_last, augmentation on the device (fused Adam is always on)."""
    return [f"data.shards={shards}", "task.kind=jigsaw-mi", "task.estimator=eta-mine", "model.encoder=resnet50",
            "data.images_per_batch=2", "data.perms_per_image=4", "data.num_permutations=10",
            "data.augment_on=device", "train.bf16=true", "train.channels_last=true", "optim.lr=1e-3", *extra]


class CudaSyncCounter:
    """Counts the synchronizing CUDA operations torch flags (``torch.cuda.set_sync_debug_mode("warn")``:
    ``.item()``, a blocking copy to the host, ``nonzero``, a stream or device synchronize) inside the
    ``with`` block; ``count`` after it. Operations inside torch.distributed are not flagged."""

    MESSAGE = "called a synchronizing CUDA operation"

    def __enter__(self):
        self._warnings = warnings.catch_warnings(record=True)
        self._seen = self._warnings.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._warnings.__exit__(*exc)
        self.count = sum(self.MESSAGE in str(w.message) for w in self._seen)
