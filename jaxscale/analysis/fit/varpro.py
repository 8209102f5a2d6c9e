"""Variable-projection point fit of the Chinchilla form L(N, D) = E + A/N^α + B/D^β.

For fixed (α, β) the loss is linear in (E, A, B), so those are solved exactly by
non-negative least squares and only the two exponents are searched (Golub & Pereyra 1973,
"The differentiation of pseudo-inverses and nonlinear least squares problems whose variables
separate"). On a noise-free Chinchilla surface this recovers all five parameters to machine
precision, where Hoffmann et al. 2022 App. D's L-BFGS over five parameters from a grid of
starts stops short (Open-Athena "scaling-law-analysis"; Besiroglu et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

PARAMS = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class VarProFit:
    """Point estimate of (E, A, B, α, β) and the residual RMS on the loss scale."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    rmse: float
    n: int

    def params(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in PARAMS}

    def predict(self, N: np.ndarray, D: np.ndarray) -> np.ndarray:
        """L(N, D) = E + A N^-α + B D^-β (Hoffmann et al. 2022 eq. 2)."""
        N, D = np.asarray(N, float), np.asarray(D, float)
        return self.E + self.A * N**-self.alpha + self.B * D**-self.beta

    def allocation_exponents(self) -> tuple[float, float]:
        """(a, b) of N_opt ∝ C^a, D_opt ∝ C^b: a = β/(α+β), b = α/(α+β) (Hoffmann 2022 eq. 4)."""
        s = self.alpha + self.beta
        return self.beta / s, self.alpha / s


def _design(logN_P: np.ndarray, logD_P: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.stack([np.ones_like(logN_P), np.exp(-alpha * logN_P), np.exp(-beta * logD_P)], 1)


def _linear(X_Px3: np.ndarray, y_P: np.ndarray) -> np.ndarray:
    """Non-negative (E, A, B) minimising |X c - y|, columns scaled for conditioning."""
    scale_3 = np.linalg.norm(X_Px3, axis=0)
    c_3, _ = optimize.nnls(X_Px3 / scale_3, y_P, maxiter=1000)
    return c_3 / scale_3


def _residual(ab_2: np.ndarray, logN_P, logD_P, y_P) -> np.ndarray:
    X = _design(logN_P, logD_P, ab_2[0], ab_2[1])
    return X @ _linear(X, y_P) - y_P


def fit_varpro(
    N: np.ndarray,
    D: np.ndarray,
    loss: np.ndarray,
    *,
    grid: np.ndarray | None = None,
    bounds: tuple[float, float] = (0.01, 2.5),
) -> VarProFit:
    """Least-squares fit of the Chinchilla form on the loss by variable projection.

    A coarse (α, β) grid picks the start; a trust-region refinement of the two exponents
    (the linear three solved exactly at every step) finishes to machine precision.
    """
    N, D, y = (np.asarray(v, float).ravel() for v in (N, D, loss))
    if not (len(N) == len(D) == len(y)):
        raise ValueError(f"N, D and loss differ in length: {len(N)}, {len(D)}, {len(y)}")
    ok = np.isfinite(N) & np.isfinite(D) & np.isfinite(y) & (N > 0) & (D > 0)
    if ok.sum() < 6:
        raise ValueError(f"need at least 6 finite (N, D, loss) points, got {int(ok.sum())}")
    logN, logD, y = np.log(N[ok]), np.log(D[ok]), y[ok]
    grid = np.linspace(0.05, 1.5, 30) if grid is None else np.asarray(grid, float)
    sse = [
        (float(np.sum(_residual(np.array([a, b]), logN, logD, y) ** 2)), a, b)
        for a in grid
        for b in grid
    ]
    _, a0, b0 = min(sse)
    sol = optimize.least_squares(
        _residual,
        np.array([a0, b0]),
        args=(logN, logD, y),
        bounds=([bounds[0]] * 2, [bounds[1]] * 2),
        method="trf",
        x_scale="jac",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=10_000,
    )
    alpha, beta = (float(v) for v in sol.x)
    E, A, B = (float(v) for v in _linear(_design(logN, logD, alpha, beta), y))
    r = _residual(sol.x, logN, logD, y)
    return VarProFit(E, A, B, alpha, beta, float(math.sqrt(np.mean(r**2))), int(len(y)))
