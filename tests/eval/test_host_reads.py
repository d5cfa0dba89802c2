"""Evaluation waits for the device rarely: extraction never copies a batch back at once, and the probes
read their loss and accuracy once an epoch, whatever the number of steps. Counted on the CPU with the
training loop's counter of host reads (tests/pretrain/test_gpu_path.py), not timed."""
import torch

from eval.features import extract_features
from eval.probe import train_linear_probe
from eval.sweep import sweep_grid, train_sweep
from pretrain.models import build_encoder
from tests.pretrain.test_gpu_path import HostSyncCounter


def test_extraction_reads_no_batch_back_from_the_device():
    encoder = build_encoder("dcgan", depth=2, image_size=32)
    g = torch.Generator().manual_seed(0)
    batches = [{"images": torch.randn(4, 3, 32, 32, generator=g), "label": torch.tensor([0, 1, 2, 0]), "key": list("abcd")}
               for _ in range(5)]
    with HostSyncCounter() as counter:
        out = extract_features(encoder, batches, "infomax", progress=False)
    assert counter.ops == []  # no .cpu() (a wait on a GPU) per batch, no label copy
    assert out["features"].shape == (20, encoder.feature_dim) and out["labels"].tolist() == [0, 1, 2, 0] * 5
    with torch.no_grad():
        torch.testing.assert_close(out["features"][4:8], encoder.eval()(batches[1]["images"]))


def _reads(fn, **kw) -> int:
    with HostSyncCounter() as counter:
        fn(**kw)
    return len(counter.ops)


def test_the_probes_read_the_device_a_fixed_number_of_times_an_epoch():
    g = torch.Generator().manual_seed(1)
    x, xt = torch.randn(256, 8, generator=g), torch.randn(64, 8, generator=g)
    y, yt = torch.randint(0, 3, (256,), generator=g), torch.randint(0, 3, (64,), generator=g)

    def probe(epochs, batch_size):
        return train_linear_probe(x, y, xt, yt, 3, epochs=epochs, seed=0, batch_size=batch_size, progress=False)

    def sweep(epochs, batch_size):
        return train_sweep(x, y, 3, sweep_grid([1e-3, 1e-2], [0.0, 1e-3]), epochs=epochs, seed=0, batch_size=batch_size, progress=False)

    for fn in (probe, sweep):
        # 256 or 16 steps an epoch: the same reads; the paper probe read its loss every step (~39,000 a seed on CIFAR-10)
        assert _reads(fn, epochs=2, batch_size=16) == _reads(fn, epochs=2, batch_size=128)
        per_epoch = _reads(fn, epochs=3, batch_size=16) - _reads(fn, epochs=2, batch_size=16)
        assert per_epoch in (1, 2, 3), per_epoch
