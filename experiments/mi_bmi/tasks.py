"""Tasks of the BMI benchmark (Czyż et al., NeurIPS 2023, "Beyond Normal"), ported to torch.

Each task samples (x, y) pairs, x [n, dim_x] and y [n, dim_y] (float64), and knows its true mutual
information in nats. Three base families have MI in closed form:

- multivariate normal (covariance Σ over (x, y)): ½·log(det Σ_xx · det Σ_yy / det Σ);
- multivariate Student-t with ν degrees of freedom and dispersion Σ: the normal MI of Σ plus
  g(dim_x) + g(dim_y) − g(dim_x + dim_y), g(d) = log Γ(ν/2) − log Γ((ν+d)/2) + (ν+d)/2·[ψ((ν+d)/2) − ψ(ν/2)]
  (from the Student-t entropy; the terms in det Σ and π cancel), positive even when Σ = I;
- additive uniform noise, x ~ U(0, 1), y = x + U(−ε, ε): ε − log 2ε for ε ≤ ½, 1/(4ε) for ε ≥ ½.

Every other task applies invertible maps to x and to y separately, which leave MI unchanged:
the normal CDF (uniform margins), the half-cube x·|x|^{1/2} (longer tails), asinh (shorter tails),
a wiggly monotone map, the inverse CDF of a two-component normal mixture (bimodal margins) and a
spiral, which rotates x in the plane of its first two coordinates by an angle proportional to ‖x‖²
(norm-preserving, so inverted by the opposite rotation).

Settings follow the BMI paper's task list: correlation 0.75 for the 1-D normal family; "dense"
covariance 0.5 between every pair of coordinates (1 on the diagonal); "sparse": x_i and y_i
correlated 0.8 for i < 2, every pair inside x (and inside y) 0.1, nothing else. Student-t takes
integer ν (drawn as a sum of ν squared normals, which keeps every draw on the caller's generator).

    task = TASKS["multinormal-sparse-5-5"]
    x, y = task.sample(5000, torch.Generator().manual_seed(0));  task.mi
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------ closed forms


def normal_mi(cov: torch.Tensor, dim_x: int) -> float:
    """MI (nats) of a normal over (x, y) with covariance ``cov`` [dx+dy, dx+dy], x the first ``dim_x``."""
    cov = cov.double()
    ld = lambda m: torch.linalg.slogdet(m)[1]  # noqa: E731
    return float(0.5 * (ld(cov[:dim_x, :dim_x]) + ld(cov[dim_x:, dim_x:]) - ld(cov)))


def student_correction(df: int, dim_x: int, dim_y: int) -> float:
    """MI of a Student-t (ν = ``df``) minus the normal MI of its dispersion: g(dx) + g(dy) − g(dx+dy)."""

    def g(d: int) -> float:
        a, b = df / 2.0, (df + d) / 2.0
        return math.lgamma(a) - math.lgamma(b) + b * (float(torch.special.digamma(torch.tensor(b, dtype=torch.float64)))
                                                      - float(torch.special.digamma(torch.tensor(a, dtype=torch.float64))))

    return g(dim_x) + g(dim_y) - g(dim_x + dim_y)


def additive_uniform_mi(epsilon: float) -> float:
    """MI of x ~ U(0, 1), y = x + U(−ε, ε)."""
    return epsilon - math.log(2 * epsilon) if epsilon <= 0.5 else 1.0 / (4 * epsilon)


# ------------------------------------------------------------------------ covariances


def dense_covariance(dim_x: int, dim_y: int, correlation: float = 0.5) -> torch.Tensor:
    """1 on the diagonal, ``correlation`` everywhere else: [dx+dy, dx+dy] float64."""
    n = dim_x + dim_y
    return torch.full((n, n), correlation, dtype=torch.float64).fill_diagonal_(1.0)


def sparse_covariance(dim_x: int, dim_y: int, pairs: int = 2, signal: float = 0.8, noise: float = 0.1) -> torch.Tensor:
    """x_i, y_i correlated ``signal`` for i < ``pairs``; every pair inside x and inside y ``noise``."""
    n = dim_x + dim_y
    cov = torch.zeros(n, n, dtype=torch.float64)
    cov[:dim_x, :dim_x] = noise
    cov[dim_x:, dim_x:] = noise
    for i in range(min(pairs, dim_x, dim_y)):
        cov[i, dim_x + i] = cov[dim_x + i, i] = signal
    return cov.fill_diagonal_(1.0)


# ------------------------------------------------------------------------ invertible maps


def normal_cdf(t: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(t)


def half_cube(t: torch.Tensor) -> torch.Tensor:
    return t * t.abs().sqrt()


def wiggly_x(t: torch.Tensor) -> torch.Tensor:
    """Strictly increasing: its derivative is at least 1 − 0.4 − 0.34 − 0.099 > 0."""
    return t + 0.4 * torch.sin(t) + 0.2 * torch.sin(1.7 * t + 1) + 0.03 * torch.sin(3.3 * t - 2.5)


def wiggly_y(t: torch.Tensor) -> torch.Tensor:
    """Strictly increasing: its derivative is at least 1 − 0.16 − 0.221 − 0.086 > 0."""
    return t - 0.4 * torch.sin(0.4 * t) + 0.17 * torch.sin(1.3 * t + 3.5) + 0.02 * torch.sin(4.3 * t - 2.5)


def mixture_icdf(weights: tuple[float, ...], means: tuple[float, ...]) -> Transform:
    """u ∈ (0, 1) -> the inverse CDF of Σ_k w_k N(m_k, 1), by 64 bisection steps on [−20, 20]."""
    w = torch.tensor(weights, dtype=torch.float64)
    m = torch.tensor(means, dtype=torch.float64)

    def cdf(t: torch.Tensor) -> torch.Tensor:
        return (w * torch.special.ndtr(t[..., None] - m)).sum(-1)

    def icdf(u: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.full_like(u, -20.0), torch.full_like(u, 20.0)
        for _ in range(64):
            mid = (lo + hi) / 2
            below = cdf(mid) < u
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2

    icdf.cdf = cdf  # the tests check icdf against it
    return icdf


BIMODAL_X = mixture_icdf((0.3, 0.7), (0.0, 5.0))
BIMODAL_Y = mixture_icdf((0.5, 0.5), (-1.0, 3.0))


def bimodal_x(t: torch.Tensor) -> torch.Tensor:
    return BIMODAL_X(torch.special.ndtr(t))


def bimodal_y(t: torch.Tensor) -> torch.Tensor:
    return BIMODAL_Y(torch.special.ndtr(t))


def spiral(speed: float = 0.5, inverse: bool = False) -> Transform:
    """x [n, d ≥ 2] -> x rotated in the plane of coordinates 0, 1 by speed·‖x‖² (the opposite way with ``inverse``)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        angle = (-1 if inverse else 1) * speed * (x * x).sum(-1)
        c, s = torch.cos(angle), torch.sin(angle)
        out = x.clone()
        out[:, 0], out[:, 1] = c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]
        return out

    return apply


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


# ------------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class Task:
    """A sampler with known MI: ``base`` is ``normal``, ``student`` or ``additive``; the maps act
    on x and y after the base draw."""

    name: str
    dim_x: int
    dim_y: int
    base: str
    cov: torch.Tensor | None = None  # covariance (normal) or dispersion (student), [dx+dy, dx+dy]
    df: int = 0  # Student-t degrees of freedom
    epsilon: float = 0.0  # additive noise half-width
    map_x: Transform = identity
    map_y: Transform = identity

    @property
    def mi(self) -> float:
        """True MI in nats."""
        if self.base == "additive":
            return additive_uniform_mi(self.epsilon)
        base = normal_mi(self.cov, self.dim_x)
        return base + (student_correction(self.df, self.dim_x, self.dim_y) if self.base == "student" else 0.0)

    def sample_base(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws of the untransformed base -> x [n, dx], y [n, dy] float64."""
        if self.base == "additive":
            x = torch.rand(n, 1, generator=gen, dtype=torch.float64)
            return x, x + self.epsilon * (2 * torch.rand(n, 1, generator=gen, dtype=torch.float64) - 1)
        chol = torch.linalg.cholesky(self.cov)
        z = torch.randn(n, self.dim_x + self.dim_y, generator=gen, dtype=torch.float64) @ chol.T
        if self.base == "student":
            chi2 = (torch.randn(n, self.df, generator=gen, dtype=torch.float64) ** 2).sum(1, keepdim=True)
            z = z * torch.sqrt(self.df / chi2)
        return z[:, : self.dim_x], z[:, self.dim_x :]

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n pairs -> x [n, dim_x], y [n, dim_y] float64."""
        x, y = self.sample_base(n, gen)
        return self.map_x(x), self.map_y(y)


def _normal(name, dx, dy, cov, **maps) -> Task:
    return Task(name, dx, dy, "normal", cov=cov, **maps)


def _student(name, dx, dy, df, cov, **maps) -> Task:
    return Task(name, dx, dy, "student", cov=cov, df=df, **maps)


def _binormal(rho: float = 0.75) -> torch.Tensor:
    return torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)


def _build() -> dict[str, Task]:
    tasks = [
        _normal("1v1-normal-0.75", 1, 1, _binormal()),
        _normal("1v1-uniform-margins-0.75", 1, 1, _binormal(), map_x=normal_cdf, map_y=normal_cdf),
        Task("1v1-additive-0.1", 1, 1, "additive", epsilon=0.1),
        Task("1v1-additive-0.75", 1, 1, "additive", epsilon=0.75),
        _normal("1v1-bimodal-0.75", 1, 1, _binormal(), map_x=bimodal_x, map_y=bimodal_y),
        _normal("1v1-wiggly-0.75", 1, 1, _binormal(), map_x=wiggly_x, map_y=wiggly_y),
        _normal("1v1-half-cube-0.75", 1, 1, _binormal(), map_x=half_cube, map_y=half_cube),
        _student("1v1-student-t-dof1-0.75", 1, 1, 1, _binormal()),
        _student("1v1-asinh-student-t-dof1-0.75", 1, 1, 1, _binormal(), map_x=torch.asinh, map_y=torch.asinh),
    ]
    for d in (2, 3, 5, 25):
        tasks.append(_normal(f"multinormal-dense-{d}-{d}", d, d, dense_covariance(d, d)))
    for d in (2, 3, 5, 25):
        tasks.append(_normal(f"multinormal-sparse-{d}-{d}", d, d, sparse_covariance(d, d)))
    for d, df in ((2, 1), (3, 2), (5, 2), (5, 3)):
        tasks.append(_student(f"student-t-dense-{d}-{d}-dof{df}", d, d, df, dense_covariance(d, d)))
    for d, df in ((2, 1), (3, 2), (5, 2)):
        tasks.append(_student(f"asinh-student-t-dense-{d}-{d}-dof{df}", d, d, df, dense_covariance(d, d), map_x=torch.asinh, map_y=torch.asinh))
    for d in (3, 5):
        cov = sparse_covariance(d, d)
        tasks.append(_normal(f"normal-cdf-sparse-{d}-{d}", d, d, cov, map_x=normal_cdf, map_y=normal_cdf))
        tasks.append(_normal(f"half-cube-sparse-{d}-{d}", d, d, cov, map_x=half_cube, map_y=half_cube))
        tasks.append(_normal(f"spiral-sparse-{d}-{d}", d, d, cov, map_x=spiral()))
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _build()
