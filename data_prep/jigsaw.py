"""The jigsaw puzzle task's data side: the permutation set and the puzzle geometry (paper App. D).

Geometry (train): squash the image to 292×292, take a random 255×255 crop, turn it grayscale with
p = 0.66 (mean of RGB copied to the 3 channels), split it into a 3×3 grid of 85×85 cells and take a
random 64×64 crop in each cell; standardise every patch's channels to zero mean and unit variance.
At test time the crops are centred and nothing is grayed. Crops are taken in uint8 and the
standardisation runs once per batch in torch: that is what makes ≥ 500 images/s per core possible.

A permutation ``p`` (a row of the set) scrambles the tiles so that position ``j`` of the puzzle shows
tile ``p[j]`` (tiles numbered row-major): ``puzzle = patches[p]``.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import mmap
import sys
from pathlib import Path

import numpy as np
import torch

GRID = 3
RESIZE = 292
CROP = 255
CELL = CROP // GRID  # 85
PATCH = 64
GRAY_PROB = 0.66
EVAL_RESIZE = 232
EVAL_CROP = 192  # 3 × 64: the eval grid has no gaps
EPS = 1e-5


@functools.lru_cache(maxsize=1)
def _all_permutations() -> np.ndarray:
    perms = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(GRID * GRID))),
                        dtype=np.int8, count=362880 * 9).reshape(-1, 9)
    perms.flags.writeable = False
    return perms


def _distances(columns: list[np.ndarray], p: np.ndarray) -> np.ndarray:
    same = np.zeros(len(columns[0]), dtype=np.int32)
    for k, col in enumerate(columns):
        same += col == p[k]
    return len(columns) - same


def max_hamming_permutations(n: int = 100, seed: int = 0, criterion: str = "mean") -> np.ndarray:
    """Noroozi & Favaro's greedy maximal-Hamming permutation set: int64 [n, 9].

    Algorithm 1 of Noroozi & Favaro (2016): start from a random permutation (drawn with ``seed``),
    then repeatedly add the permutation whose summed (``criterion="mean"``, the paper's choice)
    Hamming distance to those already chosen is largest. ``criterion="min"`` maximises the smallest
    distance instead (a larger minimum, slightly lower mean). Deterministic for (n, seed, criterion).
    """
    if not 1 <= n <= 362880:
        raise ValueError(f"n must be in 1..362880, got {n}")
    if criterion not in ("mean", "min"):
        raise ValueError(f"criterion must be 'mean' or 'min', got {criterion!r}")
    perms = _all_permutations()
    columns = [np.ascontiguousarray(perms[:, k]) for k in range(perms.shape[1])]
    rng = np.random.default_rng(seed)
    first = int(rng.integers(len(perms)))
    chosen = [first]
    score = _distances(columns, perms[first])
    taken = np.zeros(len(perms), dtype=bool)
    taken[first] = True
    while len(chosen) < n:
        masked = np.where(taken, -1, score)
        j = int(masked.argmax())
        chosen.append(j)
        taken[j] = True
        d = _distances(columns, perms[j])
        score = score + d if criterion == "mean" else np.minimum(score, d)
    return perms[chosen].astype(np.int64)


def hamming_stats(perms: np.ndarray) -> dict:
    """Minimum and mean pairwise Hamming distance of a permutation set [n, 9]."""
    perms = np.asarray(perms)
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    off = d[~np.eye(len(perms), dtype=bool)]
    return {"min": int(off.min()), "mean": float(off.mean())}


# The one permutation set every jigsaw run uses, whatever its run.seed (the paper trains all its
# seeds on one set): max_hamming_permutations(NUM_PERMUTATIONS, seed=0), generated once and committed
# with its sha256 (`python -m data_prep.jigsaw` writes both; `sha256sum -c` checks the file).
NUM_PERMUTATIONS = 100  # the paper's set size: the classes of jigsaw-ce, the columns of jigsaw-mi
PERMUTATIONS_DIR = Path(__file__).resolve().parent / "permutations"
DEFAULT_PERMUTATIONS = PERMUTATIONS_DIR / f"max_hamming_{NUM_PERMUTATIONS}.txt"


def permutations_text(perms: np.ndarray) -> str:
    """The canonical text of a set [n, 9]: one permutation a line, 0-based, space-separated."""
    return "".join(" ".join(str(int(v)) for v in row) + "\n" for row in np.asarray(perms))


def permutations_sha256(perms: np.ndarray) -> str:
    """sha256 of :func:`permutations_text`: equal sets have equal digests, whatever file they came from."""
    return hashlib.sha256(permutations_text(perms).encode()).hexdigest()


def save_permutations(path: str | Path, perms: np.ndarray) -> str:
    """Write the set as canonical text and ``<path>.sha256`` (``sha256sum`` format); returns the digest."""
    path = Path(path)
    path.write_text(permutations_text(perms))
    digest = permutations_sha256(perms)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def load_permutations(path: str | Path) -> np.ndarray:
    """Load and check a set: int64 [n, 9], each row a permutation of 0..8.

    ``.npy`` (read with ``allow_pickle=False``) or text with 9 integers a line. A set numbered 1..9
    (as some published ones are) is shifted to 0..8.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"permutation set {path} does not exist")
    try:
        perms = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path} is not a .npy array or a text file of 9 integers a line ({exc})") from None
    perms = np.asarray(perms)
    if perms.ndim == 2 and perms.shape[1] == 9 and perms.size and perms.min() == 1 and perms.max() == 9:
        perms = perms - 1
    if perms.ndim != 2 or perms.shape[1] != 9 or not (np.sort(perms, 1) == np.arange(9)).all():
        raise ValueError(f"{path} does not hold an [n, 9] set of permutations of 0..8")
    return perms.astype(np.int64)


def permutation_set(path: str | Path | None, n: int) -> tuple[np.ndarray, str]:
    """The first ``n`` rows of the set at ``path`` (None: the committed set) and their sha256.

    The committed set is checked against its committed digest. Greedy max-Hamming sets are built
    row by row, so their first ``n`` rows are the greedy set of ``n``. Raises ``ValueError`` (one
    line) for a set with fewer than ``n`` rows or a committed file that does not match its digest.
    """
    file = DEFAULT_PERMUTATIONS if path is None else Path(path)
    perms = load_permutations(file)
    if path is None:
        expected = file.with_name(file.name + ".sha256").read_text().split()[0]
        if permutations_sha256(perms) != expected:
            raise ValueError(f"{file} does not match its sha256 ({expected}); restore it with git checkout")
    if len(perms) < n:
        raise ValueError(f"permutation set {file} has {len(perms)} rows, data.num_permutations asks for {n}")
    perms = perms[:n]
    return perms, permutations_sha256(perms)


def main() -> None:
    """Regenerate the committed set (it should come out identical: the generator is deterministic)."""
    PERMUTATIONS_DIR.mkdir(exist_ok=True)
    digest = save_permutations(DEFAULT_PERMUTATIONS, max_hamming_permutations(NUM_PERMUTATIONS, seed=0))
    print(f"{DEFAULT_PERMUTATIONS}: sha256 {digest}")


def crop_corners(rng: np.random.Generator | None) -> np.ndarray:
    """Top-left corners (y, x) int64 [9, 2] of the 9 tiles in a [292, 292] image: random if ``rng``
    (the crop's corner, then each tile's offset in its cell), else centred."""
    if rng is None:
        y0 = x0 = (RESIZE - CROP) // 2
        offsets = np.full((GRID * GRID, 2), (CELL - PATCH) // 2)
    else:
        y0, x0 = rng.integers(0, RESIZE - CROP + 1, size=2)
        offsets = rng.integers(0, CELL - PATCH + 1, size=(GRID * GRID, 2))
    t = np.arange(GRID * GRID)
    return np.stack([y0 + (t // GRID) * CELL + offsets[:, 0], x0 + (t % GRID) * CELL + offsets[:, 1]], 1).astype(np.int64)


def tile_crops(image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """[292, 292, 3] uint8 -> the 9 tiles [9, 64, 64, 3] uint8 (random crops if ``rng``, else centred)."""
    return np.stack([image[y:y + PATCH, x:x + PATCH] for y, x in crop_corners(rng)])


def grid_tiles(image: np.ndarray) -> np.ndarray:
    """Evaluation tiles: [192, 192, 3] uint8 -> [9, 64, 64, 3], a gapless 3×3 grid."""
    return image.reshape(GRID, PATCH, GRID, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(GRID * GRID, PATCH, PATCH, 3)


def standardise(tiles: np.ndarray | torch.Tensor, gray: torch.Tensor | None = None, *,
                sync_free: bool = False) -> torch.Tensor:
    """uint8 tiles [..., 64, 64, 3] -> float32 [..., 3, 64, 64], each patch's channels standardised.

    ``gray``: bool over the leading dims but the last tile dim ([B] for tiles [B, 9, ...]); those
    images get the mean of RGB in all three channels first. Runs where ``tiles`` are; ``sync_free``
    never reads values back (for an accelerator: ``data.augment_on=device``), the same numbers.
    """
    tiles = tiles if torch.is_tensor(tiles) else torch.as_tensor(tiles)  # a tensor stays on its device
    x = tiles.movedim(-1, -3).contiguous().float()  # uint8 transpose first: 4× less to move
    if gray is not None and sync_free:  # masked indexing would wait for the device
        gray = gray.to(x.device).reshape(*gray.shape, *[1] * (x.dim() - gray.dim()))
        x = torch.where(gray, x.mean(dim=-3, keepdim=True).expand_as(x), x)
    elif gray is not None and bool(gray.any()):
        x[gray] = x[gray].mean(dim=-3, keepdim=True).expand_as(x[gray])
    flat = x.view(-1, x.shape[-2] * x.shape[-1])
    flat.sub_(flat.mean(dim=1, keepdim=True))  # (torch.var_mean measured 15× slower here)
    var = torch.linalg.vector_norm(flat, dim=1, keepdim=True).square_().div_(flat.shape[1])
    flat.mul_(torch.rsqrt(var.add_(EPS)))
    return x


class BufferPool:
    """Reusable float32 output buffers for batches, handed out only when nobody holds them any more.

    A jigsaw batch is ~70 MB; a fresh allocation of that size is returned to the OS when freed and
    costs ~17,000 page faults at its next use, measured here at several times the cost of the copy
    that fills it. The pool keeps up to ``size`` buffers (advised for transparent huge pages) and
    hands one out again once every tensor made from it is gone (its refcount fell back to the
    pool's), so a training loop that drops each batch after the step reuses memory without faults,
    and one that keeps batches simply gets fresh buffers.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self.arrays: list[np.ndarray] = []

    @staticmethod
    def _allocate(count: int) -> np.ndarray:
        buf = mmap.mmap(-1, count * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            buf.madvise(mmap.MADV_HUGEPAGE)
        return np.frombuffer(buf, dtype=np.float32, count=count)

    def get(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised float32 tensor of ``shape``, backed by a pooled buffer when one is free."""
        count = int(np.prod(shape))
        for i in range(len(self.arrays)):
            # references: the pool's list and getrefcount's argument; any live tensor adds one
            if self.arrays[i].size == count and sys.getrefcount(self.arrays[i]) == 2:
                return torch.from_numpy(self.arrays[i]).view(shape)
        array = self._allocate(count)
        if len(self.arrays) < self.size:
            self.arrays.append(array)
        return torch.from_numpy(array).view(shape)


_POOL = BufferPool()


def scramble(tiles: torch.Tensor, perm_rows: torch.Tensor, image_index: torch.Tensor, perm_slot: torch.Tensor,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """Puzzles from unique tiles: ``out[r, j] = tiles[image_index[r], perm_rows[perm_slot[r], j]]``.

    tiles: [I, 9, C, H, W] (any device); perm_rows: int64 [P, 9] (the batch's permutations);
    image_index, perm_slot: int64 [R]. Returns [R, 9, C, H, W]. Consumers of ``gather=False``
    batches call this on the GPU (or better, run the encoder on the I·9 unique tiles and gather features).
    """
    n_tiles = tiles.shape[1]
    flat_index = (image_index[:, None] * n_tiles + perm_rows[perm_slot]).reshape(-1)
    flat = tiles.reshape(-1, *tiles.shape[2:])
    if out is None:
        return flat[flat_index].reshape(len(image_index), n_tiles, *tiles.shape[2:])
    torch.index_select(flat, 0, flat_index, out=out.view(-1, *tiles.shape[2:]))
    return out


def make_batch(tiles: np.ndarray, labels: np.ndarray, permutations: np.ndarray, perms_per_image: int,
               rng: np.random.Generator, train: bool = True, gather: bool = True,
               device_augment: bool = False) -> dict:
    """Scramble every image with each of ``perms_per_image`` permutations drawn for the batch.

    tiles: uint8 [I, 9, 64, 64, 3] (from :func:`tile_crops`); labels: int [I].
    Returns ``patches`` float32 [I·P, 9, 3, 64, 64] (puzzle ``r = i·P + s`` is image ``i`` scrambled by
    ``batch_perms[s]``), ``perm_index`` int64 [I·P] (row of the set), ``batch_perms`` int64 [P],
    ``perm_slot`` int64 [I·P] (``s``), ``image_index`` int64 [I·P] (``i``), ``label`` int64 [I·P].
    Each patch is standardised once and then gathered P times (its statistics do not depend on where
    it lands). ``gather=False`` returns ``tiles`` float32 [I, 9, 3, 64, 64] (the standardised tiles in
    natural order) and ``perm_rows`` int64 [P, 9] instead of ``patches``: P times less data to move;
    :func:`scramble` rebuilds ``patches`` from them. ``device_augment=True`` leaves the per-patch work to
    the consumer's device: ``tiles_u8`` uint8 [I, 9, 64, 64, 3] as cropped and ``gray`` bool [I] instead
    of ``tiles`` (``standardise(tiles_u8, gray)`` gives them, equal to the host's), with ``perm_rows``;
    the random draws are the same as the host path's.
    """
    n_images, n_perms = len(labels), perms_per_image
    if n_perms > len(permutations):
        raise ValueError(f"perms_per_image={n_perms} exceeds the {len(permutations)} permutations in the set")
    gray = torch.from_numpy(rng.random(n_images) < GRAY_PROB) if train else None
    x = None if device_augment else standardise(tiles, gray)  # [I, 9, 3, 64, 64]
    batch_perms = torch.from_numpy(np.sort(rng.choice(len(permutations), size=n_perms, replace=False)))
    perm_rows = torch.as_tensor(permutations, dtype=torch.long)[batch_perms]  # [P, 9]
    image_index = torch.arange(n_images).repeat_interleave(n_perms)
    perm_slot = torch.arange(n_perms).repeat(n_images)
    batch = {
        "perm_index": batch_perms[perm_slot],
        "batch_perms": batch_perms,
        "perm_slot": perm_slot,
        "image_index": image_index,
        "label": torch.as_tensor(np.asarray(labels, dtype=np.int64))[image_index],
    }
    if device_augment:
        if tiles is not None:  # None: the consumer decodes and crops too (data.decode_on=device)
            batch["tiles_u8"] = torch.from_numpy(np.ascontiguousarray(tiles))
        batch["gray"] = gray if gray is not None else torch.zeros(n_images, dtype=torch.bool)
        batch["perm_rows"] = perm_rows
    elif gather:
        out = _POOL.get((n_images * n_perms, *x.shape[1:]))
        batch["patches"] = scramble(x, perm_rows, image_index, perm_slot, out=out)
    else:
        batch["tiles"] = x
        batch["perm_rows"] = perm_rows
    return batch


if __name__ == "__main__":
    main()
