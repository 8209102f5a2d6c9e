"""Planted data with known answers: synthetic run stores for tests, notebooks and benchmarks.

Each generator writes runs in the run-directory format (through RunDir) from a stated law plus
noise, so an analysis can be checked end to end against the truth it should recover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxscale.analysis.width_depth import tagged_level
from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.rundir import RunDir

# --------------------------------------------------------------------------------------------
# A batch sweep with a known critical batch (Kaplan 2020 §5.1)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantedSweep:
    """Synthetic batch sweep with known B_crit(L): S_min(L) = s0/(L - l_inf)^2 steps and
    B_noise(L) = b_star L^-inv_alpha_b sequences; a run at batch B reaches L at
    S = S_min(L) (1 + B_noise(L)/B) (Kaplan 2020 eq. 5.1). Units: sequences of context_length."""

    b_star: float = 54.0
    inv_alpha_b: float = 3.0
    s0: float = 50.0
    l_inf: float = 1.0
    context_length: int = 32
    loss_noise: float = 0.01
    gns_noise: float = 0.1

    def b_crit(self, L: Any) -> Any:
        """Planted B_crit(L) = B_noise(L) in sequences."""
        return self.b_star * np.asarray(L, np.float64) ** -self.inv_alpha_b

    def steps(self, L: Any, B: float) -> Any:
        """Planted steps to reach L at batch B."""
        L = np.asarray(L, np.float64)
        return self.s0 / (L - self.l_inf) ** 2 * (1 + self.b_crit(L) / B)

    def write(
        self,
        root: str | Path,
        batch_sizes: Sequence[int] = (2, 4, 8, 16, 32, 64, 128),
        *,
        l_end: float = 1.42,
        seed: int = 0,
    ) -> list[str]:
        """Write one run per batch size in the run-store format (config/metrics/summary)."""

        if not l_end > self.l_inf:
            raise ValueError(f"l_end={l_end} must exceed l_inf={self.l_inf} (never reached)")
        rng = np.random.default_rng(seed)
        T = self.context_length
        L_grid = np.linspace(self.l_inf + 3.0, l_end, 4000)
        ids = []
        for B in batch_sizes:
            s_grid = self.steps(L_grid, B)  # increasing as L falls
            n = int(math.ceil(s_grid[-1]))
            step = np.arange(1, n + 1)
            L = np.interp(np.log(step), np.log(s_grid), L_grid)
            L_obs = L + self.loss_noise * rng.standard_normal(n)
            bs = self.b_crit(L) * np.exp(self.gns_noise * rng.standard_normal(n))
            ev = max(1, n // 5)
            cfg = RunConfig(
                model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=T),
                train=TrainConfig(
                    batch_size=int(B),
                    steps=n,
                    grad_accum=2,
                    gns=True,
                    warmup_steps=0,
                    schedule="constant",
                    eval_every=ev,
                ),
                name=f"planted_B{B}",
            )
            run = RunDir.of(root, cfg)
            run.write_config(cfg)
            rows = [
                {
                    "step": int(k),
                    "tokens": int(k * B * T),
                    "loss": float(lo),
                    "gns_b_simple": float(b),
                    "gns_b_simple_tokens": float(b * T),
                }
                for k, lo, b in zip(step, L_obs, bs)
            ]
            for r in [*rows[ev - 1 :: ev], rows[-1]]:
                r["eval_loss"] = r["loss"] + 0.02
            run.append_metrics(rows)
            run.write_summary(
                {
                    "status": "done",
                    "steps": n,
                    "tokens": n * B * T,
                    "loss": rows[-1]["eval_loss"],
                    "train_loss": rows[-1]["loss"],
                },
            )
            ids.append(run.name)
        return ids


# --------------------------------------------------------------------------------------------
# A shape study with a known aspect-ratio penalty (Kaplan 2020 Fig. 5)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PenaltyTruth:
    """A planted shape law: L = (E + A N^-alpha)(1 + k (ln r - ln r*(N))^2), r* = r0 (N/N0)^s."""

    r0: float = 20.0
    n0: float = 1e5
    drift: float = 0.0
    k: float = 0.02
    k_deep: float | None = None
    E: float = 1.5
    A: float = 30.0
    alpha: float = 0.3

    def r_star(self, n: Any) -> Any:
        """Planted optimal aspect ratio r*(N)."""
        return self.r0 * (np.asarray(n, float) / self.n0) ** self.drift

    def loss(self, n: Any, r: Any) -> Any:
        """Planted loss at non-embedding N and aspect ratio r."""
        d = np.log(np.asarray(r, float)) - np.log(self.r_star(n))
        kd = self.k if self.k_deep is None else self.k_deep
        pen = self.k * np.maximum(d, 0) ** 2 + kd * np.minimum(d, 0) ** 2
        return (self.E + self.A * np.asarray(n, float) ** -self.alpha) * (1 + pen)


def write_synthetic_results(
    runs: Sequence[RunConfig],
    out_dir: str | Path,
    truth: PenaltyTruth = PenaltyTruth(),
    *,
    noise: float = 0.005,
    seed: int = 0,
) -> Path:
    """Write runs as if trained, in the run-store format, with losses from `truth` times
    lognormal noise (sd `noise`): to check a design's power before paying for it."""

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for cfg in runs:
        mc = cfg.model
        rid = cfg.run_id()
        n = tagged_level(cfg.name) or mc.n_params_nonembedding
        loss = float(truth.loss(n, mc.aspect_ratio) * math.exp(noise * rng.standard_normal()))
        run = RunDir.of(out, cfg)
        run.write_config(cfg)
        steps = cfg.train.steps
        # only the final evaluation: no learning curve is invented
        rows = [
            {
                "step": steps,
                "tokens": cfg.total_tokens,
                "loss": loss,
                "eval_loss": loss,
                "lr": cfg.train.lr,
            }
        ]
        run.append_metrics(rows)
        run.write_summary(
            {
                "status": "done",
                "loss": loss,
                "train_loss": loss,
                "steps": steps,
                "tokens": cfg.total_tokens,
                "run_id": rid,
                "name": cfg.name,
                "synthetic": True,
            },
        )
    return out


# --------------------------------------------------------------------------------------------
# Final losses from laws the Chinchilla form does not contain (misspecification tests)
# --------------------------------------------------------------------------------------------

MISSPECIFIED = ("kaplan", "cross", "lr_mistuned")


def misspecified_law(kind: str, N: Any, D: Any) -> np.ndarray:
    """Loss of a planted law that L = E + A/N^a + B/D^b only approximates.

    kaplan: Kaplan et al. 2020 eq. 1.5, L = [(Nc/N)^(aN/aD) + Dc/D]^aD with their fitted
    constants (Nc 8.8e13, Dc 5.4e13, aN 0.076, aD 0.095): no irreducible term, the terms
    combine inside a power. cross: Hoffmann 2022 eq. 2 (E 1.69, A 406.4, B 410.7, alpha 0.34,
    beta 0.28) plus an N-D interaction G/(N^alpha D^beta), G = 3e4. lr_mistuned: the same
    Chinchilla law with every run at the learning rate tuned for N0 = 1e8, costing
    1.5% per squared decade of N away from it (Kaplan 2020 Fig. 22; Wortsman et al. 2023).
    """
    N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
    chin = 1.69 + 406.4 / N**0.34 + 410.7 / D**0.28
    if kind == "kaplan":
        return ((8.8e13 / N) ** (0.076 / 0.095) + 5.4e13 / D) ** 0.095
    if kind == "cross":
        return chin + 3e4 / (N**0.34 * D**0.28)
    if kind == "lr_mistuned":
        return chin * (1.0 + 0.015 * np.log10(N / 1e8) ** 2)
    raise ValueError(f"misspecified_law: unknown kind {kind!r}; choose one of {MISSPECIFIED}")


def misspecified_isoflop(
    kind: str,
    budgets: Sequence[float] = (1e18, 3e18, 1e19, 3e19, 1e20, 3e20),
    *,
    sizes: int = 7,
    noise: float = 0.005,
    seed: int = 0,
) -> pd.DataFrame:
    """An isoFLOP design (Hoffmann 2022 approach 2: `sizes` model sizes per budget around
    N = sqrt(C/120), a factor 6 either side) with losses from misspecified_law times lognormal
    noise (sd `noise` on log loss); DataFrame with N, D, C = 6ND, budget and loss."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        Ns = math.sqrt(c / 120) * np.geomspace(1 / 6, 6, sizes)
        for n in Ns:
            d = c / (6 * n)
            loss = float(misspecified_law(kind, n, d)) * math.exp(noise * rng.standard_normal())
            rows.append({"N": n, "D": d, "C": c, "budget": c, "loss": loss})
    return pd.DataFrame(rows)
