"""Width-versus-depth sensitivity: shape grids at fixed N, the aspect-ratio penalty fit, plots.

Kaplan et al. 2020 (Fig. 5) found that at fixed non-embedding N the loss moves only a few percent
while the aspect ratio r = d_model / n_layers varies 40x ((6, 4288) is within 3% of (48, 1600)).
This module measures that on your own data with intervals:

1. :func:`shape_grid` enumerates (n_layers, d_model) pairs at each target N (matched as closely
   as integer widths allow, deviation reported) spanning >= 1.5 decades of r; heads follow a
   stated rule (fixed head_dim by default). :func:`shape_runs` turns it into RunConfigs at fixed
   tokens or, as a variant, fixed training compute per level.
2. :func:`fit_penalty` fits L(N_i, r) = L*_i (1 + k (ln r - ln r*_i)^2) jointly over levels with
   jaxscale.fit (NUTS by default): r*(N), the penalty 4x / 10x off the optimum, and the drift
   slope d ln r* / d ln N, all as posterior intervals.
3. The resulting :class:`ShapeFit` draws the Kaplan-style figure (``plot``) and writes tables,
   JSON and a text report (``save``).

Planted shape studies live in jaxscale.analysis.synthetic. CLI: ``jaxscale shape RESULTS_DIR``
(analysis) or ``jaxscale shape --plan 1e5,1e6`` (grid).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxscale.analysis import fit as F
from jaxscale.analysis import plotting
from jaxscale.config import ConfigError, ModelConfig, RunConfig
from jaxscale.core import flops
from jaxscale.runs import results
from jaxscale.runs.grids import steps_for_tokens, with_steps

HEAD_RULES = ("fixed_head_dim", "fixed_heads")
BUDGETS = ("tokens", "compute")
SMALL_WIDTH_STEP = 8  # single-head widths below head_dim: multiples of 8 (even, for RoPE)
KAPLAN_WINDOW = 40.0  # Kaplan 2020 Fig. 5: loss within a few % over a 40x aspect-ratio range
KAPLAN_PENALTY = 0.03  # Kaplan 2020 sec. 3.1: (6, 4288) within 3% of (48, 1600)
QUANTILES = (0.05, 0.5, 0.95)
# Default grid centre: Kaplan 2020 Fig. 5's best shapes sit at d_model/n_layers ~ 20-200.
DEFAULT_R_CENTER = 50.0
_LEVEL_RE = re.compile(r"(?:^|_)N(\d\.\d+e[+-]\d+)(?:_|$)")


# --------------------------------------------------------------------------------------------
# Shape grids
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One (n_layers, d_model) model aimed at a target non-embedding N."""

    n_target: float
    model: ModelConfig

    @property
    def depth(self) -> int:
        return self.model.n_layers

    @property
    def width(self) -> int:
        return self.model.d_model

    @property
    def n_params(self) -> int:
        return self.model.n_params_nonembedding

    @property
    def rel_dev(self) -> float:
        """(N - N_target) / N_target, from integer widths and depths."""
        return self.n_params / self.n_target - 1.0

    @property
    def aspect_ratio(self) -> float:
        return self.model.aspect_ratio


def level_tag(n_target: float) -> str:
    """Tag embedded in run names so the analysis groups shapes by their target N exactly."""
    return f"N{float(n_target):.3e}"


def tagged_level(name: str) -> float | None:
    """The target N tagged in a run name by level_tag, or None."""
    m = _LEVEL_RE.search(name)
    return float(m.group(1)) if m else None


def _model(
    base: ModelConfig, width: int, depth: int, head_rule: str, head_dim: int, n_heads: int | None
) -> ModelConfig | None:
    hd = head_dim if head_rule == "fixed_head_dim" else width // int(n_heads or 1)
    try:
        return base.resized(width, depth, head_dim=hd)
    except ConfigError:
        return None


def candidate_widths(
    max_width: int,
    *,
    head_rule: str = "fixed_head_dim",
    head_dim: int = 64,
    n_heads: int | None = None,
    min_width: int = SMALL_WIDTH_STEP,
) -> list[int]:
    """Widths allowed by the head rule: multiples of head_dim (narrower ones get a single head,
    multiples of 8), or for fixed_heads multiples of 2*n_heads (even head_dim for RoPE)."""
    if head_rule not in HEAD_RULES:
        raise ConfigError(f"head_rule: unknown {head_rule!r}; choose one of {list(HEAD_RULES)}")
    if head_rule == "fixed_heads":
        if not (isinstance(n_heads, int) and n_heads > 0):
            raise ConfigError("head_rule='fixed_heads' needs n_heads (a positive int)")
        step = 2 * n_heads
        return list(range(max(step, -(-min_width // step) * step), max_width + 1, step))
    if not (isinstance(head_dim, int) and head_dim > 0):
        raise ConfigError(f"head_dim: must be a positive int, got {head_dim!r}")
    small = range(-(-min_width // SMALL_WIDTH_STEP) * SMALL_WIDTH_STEP, head_dim, SMALL_WIDTH_STEP)
    return sorted({*small, *range(head_dim, max_width + 1, head_dim)})


def _per_layer_coeff(base: ModelConfig) -> float:
    # N ~ c * n_layers * d_model^2 (Kaplan 2020 eq. 2.1: c = 12 for a 4x MLP)
    m = dataclasses.replace(
        base, d_model=256, n_heads=1, d_ff=round(256 * base.d_ff / base.d_model)
    )
    return m.params_per_layer / 256**2


def feasible_shapes(
    base: ModelConfig,
    n_target: float,
    *,
    head_rule: str = "fixed_head_dim",
    head_dim: int | None = None,
    n_heads: int | None = None,
    min_width: int = SMALL_WIDTH_STEP,
    min_depth: int = 1,
    max_rel_dev: float = 0.05,
) -> list[Shape]:
    """Every allowed (width, depth) whose non-embedding N is within max_rel_dev of n_target:
    for each allowed width the depths bracketing N / (c d^2) (N = c L d^2, Kaplan 2020 eq. 2.1)."""
    hd = int(head_dim or base.head_dim)
    if not (isinstance(n_target, (int, float)) and n_target > 0 and math.isfinite(n_target)):
        raise ConfigError(f"n_target: must be a positive number of parameters, got {n_target!r}")
    if not (isinstance(min_depth, int) and min_depth >= 1):
        raise ConfigError(f"min_depth: must be a positive int, got {min_depth!r}")
    c = _per_layer_coeff(base)
    w_max = int(math.sqrt(n_target / (c * min_depth)) * 1.5) + 2 * hd
    widths = candidate_widths(
        w_max, head_rule=head_rule, head_dim=hd, n_heads=n_heads, min_width=min_width
    )
    out: dict[tuple[int, int], Shape] = {}
    for w in widths:
        L0 = n_target / (c * w * w)
        for L in {math.floor(L0), math.ceil(L0)}:
            if L < min_depth:
                continue
            m = _model(base, w, L, head_rule, hd, n_heads)
            if m is None:
                continue
            s = Shape(float(n_target), m)
            if abs(s.rel_dev) <= max_rel_dev:
                out[(L, w)] = s
    return sorted(out.values(), key=lambda s: s.aspect_ratio)


def shapes_at(
    base: ModelConfig,
    n_target: float,
    *,
    n_shapes: int = 7,
    aspect_range: tuple[float, float] | None = None,
    span_decades: float = 2.0,
    r_center: float = DEFAULT_R_CENTER,
    **kw: Any,
) -> list[Shape]:
    """Up to n_shapes of feasible_shapes(**kw), log-uniform in aspect ratio over aspect_range
    (default: `span_decades` centred on r_center, moved inside the feasible range). For each
    grid ratio the feasible shape within half a grid step that matches N best is taken (else
    the nearest in ratio), so ratio precision is traded for N precision."""
    if not (isinstance(n_shapes, int) and n_shapes >= 2):
        raise ConfigError(f"n_shapes: need at least 2 shapes per level, got {n_shapes!r}")
    feas = feasible_shapes(base, n_target, **kw)
    if not feas:
        raise ConfigError(
            f"N={n_target:.3g}: no allowed shape within max_rel_dev={kw.get('max_rel_dev', 0.05)}"
            " of the target; relax max_rel_dev or use a smaller head_dim"
        )
    if aspect_range is None:
        # span_decades centred on r_center, shifted to stay inside the feasible ratios
        r_lo, r_hi = feas[0].aspect_ratio, feas[-1].aspect_ratio
        lo = math.log10(r_center) - span_decades / 2
        lo = max(min(lo, math.log10(r_hi) - span_decades), math.log10(r_lo))
        aspect_range = (10**lo, 10 ** (lo + span_decades))
    lo, hi = (float(v) for v in aspect_range)
    if not 0 < lo < hi:
        raise ConfigError(f"aspect_range: need 0 < low < high, got {aspect_range!r}")
    pool = [s for s in feas if lo / 1.05 <= s.aspect_ratio <= hi * 1.05]
    half = 0.5 * math.log(hi / lo) / (n_shapes - 1)
    chosen: dict[tuple[int, int], Shape] = {}
    for r_t in np.geomspace(lo, hi, n_shapes):
        free = [s for s in pool if (s.depth, s.width) not in chosen]
        if not free:
            break
        near = [s for s in free if abs(math.log(s.aspect_ratio / r_t)) <= half]
        pick = (
            min(near, key=lambda s: abs(s.rel_dev))
            if near
            else min(free, key=lambda s: abs(math.log(s.aspect_ratio / r_t)))
        )
        crowded = any(
            abs(math.log(pick.aspect_ratio / c.aspect_ratio)) < half for c in chosen.values()
        )
        if abs(math.log(pick.aspect_ratio / r_t)) <= 3 * half and not crowded:
            chosen[(pick.depth, pick.width)] = pick
    return sorted(chosen.values(), key=lambda s: s.aspect_ratio)


def shape_grid(
    base: ModelConfig,
    n_targets: Sequence[float],
    *,
    min_span_decades: float = 1.5,
    min_shapes: int = 3,
    **kw: Any,
) -> list[Shape]:
    """shapes_at for each target N; every level needs >= min_shapes shapes (three locate an
    optimum) spanning >= min_span_decades of aspect ratio."""
    if not n_targets:
        raise ConfigError("shape_grid: give at least one target N")
    out: list[Shape] = []
    for n in sorted(float(v) for v in n_targets):
        shapes = shapes_at(base, n, **kw)
        span = (
            math.log10(shapes[-1].aspect_ratio / shapes[0].aspect_ratio) if len(shapes) > 1 else 0
        )
        if span < min_span_decades or len(shapes) < min_shapes:
            raise ConfigError(
                f"shape_grid: at N={n:.3g} {len(shapes)} shape(s) within max_rel_dev span "
                f"{span:.2f} decades of aspect ratio (need >= {min_shapes} spanning "
                f">= {min_span_decades}). "
                "Raise N, use a smaller head_dim/min_width, widen aspect_range or relax max_rel_dev"
            )
        out.extend(shapes)
    return out


def grid_table(shapes: Sequence[Shape]) -> Any:
    """DataFrame of a shape grid: target N, n_layers, d_model, heads, N, deviation, ratio."""

    return pd.DataFrame(
        [
            {
                "N_target": s.n_target,
                "n_layers": s.depth,
                "d_model": s.width,
                "n_heads": s.model.n_heads,
                "head_dim": s.model.head_dim,
                "d_ff": s.model.d_ff,
                "N": s.n_params,
                "rel_dev": s.rel_dev,
                "aspect_ratio": s.aspect_ratio,
            }
            for s in shapes
        ]
    )


def _per_level(v: float | Mapping[float, float] | None, n: float, what: str) -> float | None:
    if v is None or isinstance(v, (int, float)):
        return v
    for k, x in v.items():
        if math.isclose(float(k), n, rel_tol=1e-9):
            return float(x)
    raise ConfigError(f"{what}: no value for level N={n:.3e}; have {sorted(v)}")


def shape_runs(
    base: RunConfig,
    n_targets: Sequence[float],
    *,
    tokens: float | Mapping[float, float] | None = None,
    tokens_per_param: float | None = None,
    budget: str = "tokens",
    convention: str = "kaplan_attn",
    evals: int | None = 8,
    min_steps: int = 10,
    prefix: str = "shape",
    **grid_kw: Any,
) -> list[RunConfig]:
    """RunConfigs for a shape study: every shape of shape_grid, trained on `tokens` per level
    (or tokens_per_param x N_target, or base.train.steps).

    budget='tokens' gives each shape of a level the same tokens (Kaplan 2020 Fig. 5);
    budget='compute' gives them the same training FLOPs under `convention`: C_level = tokens x
    the geometric-mean FLOPs/token of the level's shapes, tokens_i = C_level / fpt_i, so deep
    narrow shapes (more attention FLOPs per token) see fewer tokens.
    """

    if budget not in BUDGETS:
        raise ConfigError(f"budget: unknown {budget!r}; choose one of {list(BUDGETS)}")
    if tokens is not None and tokens_per_param is not None:
        raise ConfigError("give tokens or tokens_per_param, not both")
    flops.check_convention(convention)
    shapes = shape_grid(base.model, n_targets, **grid_kw)
    bs, T = base.train.batch_size, base.model.context_length
    out: list[RunConfig] = []
    for n in sorted({s.n_target for s in shapes}):
        level = [s for s in shapes if s.n_target == n]
        tok = _per_level(tokens, n, "tokens")
        if tokens_per_param is not None:
            tok = tokens_per_param * n
        if tok is None:
            tok = base.train.steps * bs * T
        fpt = np.array([flops.flops_per_token(s.model, convention) for s in level])
        c_level = tok * float(np.exp(np.mean(np.log(fpt))))
        for s, f in zip(level, fpt):
            t_i = c_level / f if budget == "compute" else tok
            steps = steps_for_tokens(t_i, bs, T)
            if steps < min_steps:
                raise ConfigError(
                    f"shape_runs: {s.width}x{s.depth} at N={n:.3g} gets {steps} steps "
                    f"(< min_steps={min_steps}); raise tokens or lower batch_size"
                )
            cfg = with_steps(dataclasses.replace(base, model=s.model), steps, evals=evals)
            name = f"{prefix}_{level_tag(n)}_L{s.depth}_w{s.width}"
            out.append(dataclasses.replace(cfg, name=name))
    return out


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def shape_table(source: Any, *, drop_diverged: bool = True) -> Any:
    """One row per finished run: level (target N), N, n_layers, d_model, aspect ratio, loss.

    `source` is a results directory or a runs_df from jaxscale.results.load. Levels come from
    the N tag in run names (shape_runs writes it); untagged runs are grouped by N within 10%.
    """

    if isinstance(source, pd.DataFrame):
        runs = source.copy()
    else:
        runs, _ = results.load(source)
    need = ["model.d_model", "model.n_layers", "n_params_nonembedding", "loss"]
    missing = [c for c in need if c not in runs]
    if missing or not len(runs):
        raise ValueError(
            f"no shape runs in {source if not isinstance(source, pd.DataFrame) else 'runs_df'}: "
            f"missing columns {missing or need} (expected a jaxscale results directory)"
        )
    status = runs["status"] if "status" in runs else pd.Series("done", index=runs.index)
    bad = status.isin(["diverged"]) if drop_diverged else status.isin([])
    if bad.any():
        warnings.warn(
            f"excluding {int(bad.sum())} diverged run(s) from the shape fit", stacklevel=2
        )
    keep = (status == "done") & np.isfinite(runs["loss"].astype(float)) & ~bad
    skipped = int((~keep & ~bad).sum())
    if skipped:
        warnings.warn(f"ignoring {skipped} unfinished or lossless run(s)", stacklevel=2)
    runs = runs[keep]
    if not len(runs):
        raise ValueError("no finished runs with a final loss; train the study first")
    df = pd.DataFrame(
        {
            "run_id": runs.get("run_id", pd.Series(range(len(runs)), index=runs.index)),
            "name": runs.get("name", pd.Series("", index=runs.index)).astype(str),
            "N": runs["n_params_nonembedding"].astype(float),
            "n_layers": runs["model.n_layers"].astype(int),
            "d_model": runs["model.d_model"].astype(int),
            "loss": runs["loss"].astype(float),
        }
    )
    df["aspect_ratio"] = df["d_model"] / df["n_layers"]
    tags = df["name"].map(tagged_level)
    if tags.notna().all():
        df["level"] = tags.astype(float)
    else:
        df["level"] = _cluster_levels(df["N"].to_numpy())
    return df.sort_values(["level", "aspect_ratio"]).reset_index(drop=True)


def _cluster_levels(n: np.ndarray, rtol: float = 0.10) -> np.ndarray:
    # sorted single-linkage in log N; each level labelled by its geometric-mean N
    order = np.argsort(n)
    lab = np.zeros(n.size, int)
    for a, b in zip(order[:-1], order[1:]):
        lab[b] = lab[a] + (math.log(n[b] / n[a]) > math.log1p(rtol))
    out = np.empty(n.size)
    for g in np.unique(lab):
        out[lab == g] = float(np.exp(np.log(n[lab == g]).mean()))
    return out


# --------------------------------------------------------------------------------------------
# The penalty model
# --------------------------------------------------------------------------------------------


def _pick(lx_g: Any, p: Mapping[str, Any], name: str, m: int) -> Any:
    """Per-level parameter p[name_i] for each point; the level index i enters as g = i + 1."""

    if m == 1:
        return p[f"{name}_0"]
    out = 0.0
    for i in range(m):
        out = out + jnp.where(jnp.abs(lx_g - math.log(i + 1)) < 1e-3, 1.0, 0.0) * p[f"{name}_{i}"]
    return out


def penalty_form(n_levels: int, *, asymmetric: bool = False) -> Any:
    """The registered fit.Form for `n_levels` levels: log L = log L*_i + log1p(pen), with
    pen = k (ln r - ln r*_i)^2 (Kaplan 2020 Fig. 5 shape; a quadratic valley in log r), or
    k_wide / k_deep on either side of r*_i when asymmetric."""

    m = int(n_levels)
    if m < 1:
        raise ValueError(f"n_levels: need at least one level, got {n_levels!r}")
    name = f"shape_penalty{'_asym' if asymmetric else ''}_{m}"
    try:
        return F.get_form(name)
    except ValueError:
        pass

    def log_loss(lx: Mapping[str, Any], p: Mapping[str, Any]) -> Any:
        g = lx.get("g")
        d = lx["r"] - _pick(g, p, "log_rstar", m)
        if asymmetric:
            pen = p["k_wide"] * jnp.maximum(d, 0.0) ** 2 + p["k_deep"] * jnp.minimum(d, 0.0) ** 2
        else:
            pen = p["k"] * d**2
        return _pick(g, p, "log_Lstar", m) + jnp.log1p(pen)

    # Placeholders; fit_penalty passes data-centred priors for L*_i and r*_i.
    pri: dict[str, Any] = {f"log_Lstar_{i}": F.Prior("normal", 1.0, 1.0) for i in range(m)}
    pri |= {f"log_rstar_{i}": F.Prior("normal", 3.0, 2.0) for i in range(m)}
    k_prior = F.Prior("lognormal", math.log(0.02), 1.5)
    pri |= {"k_wide": k_prior, "k_deep": k_prior} if asymmetric else {"k": k_prior}
    return F.register_form(
        F.Form(
            name=name,
            inputs=("r", "g") if m > 1 else ("r",),
            priors=pri,
            log_loss=log_loss,
            reference="Kaplan et al. 2020, Fig. 5 (loss vs aspect ratio at fixed N)",
            description="L = L*_i (1 + k (ln r - ln r*_i)^2), i = N level",
        )
    )


def default_priors(df: Any) -> dict[str, Any]:
    """Weakly informative, data-centred priors: ln L*_i ~ N(ln min loss_i, 0.3),
    ln r*_i ~ N(centre of the level's ln r, max(1, its half-range)), k ~ LogNormal(ln .02, 1.5)."""

    pri: dict[str, Any] = {}
    for i, (_, g) in enumerate(df.groupby("level", sort=True)):
        lr = np.log(g["aspect_ratio"].to_numpy())
        pri[f"log_Lstar_{i}"] = F.Prior("normal", float(np.log(g["loss"].min())), 0.3)
        half = 0.5 * float(lr.max() - lr.min())
        pri[f"log_rstar_{i}"] = F.Prior("normal", float(lr.min() + half), max(1.0, half))
    return pri


@dataclass(frozen=True)
class ShapeFit:
    """A fitted penalty model with derived quantities as posterior draws."""

    data: Any  # shape_table rows used
    levels: np.ndarray  # target N per level
    n_level: np.ndarray  # geometric-mean actual N per level
    result: Any  # jaxscale.fit.FitResult
    asymmetric: bool

    @property
    def ok(self) -> bool:
        return bool(self.result.ok)

    def r_star(self) -> np.ndarray:
        """(draws, levels) optimal aspect ratio."""
        m = len(self.levels)
        return np.stack([np.exp(self.result.flat(f"log_rstar_{i}")) for i in range(m)], -1)

    def l_star(self) -> np.ndarray:
        m = len(self.levels)
        return np.stack([np.exp(self.result.flat(f"log_Lstar_{i}")) for i in range(m)], -1)

    def k(self, side: str = "wide") -> np.ndarray:
        if not self.asymmetric:
            return self.result.flat("k")
        return self.result.flat("k_wide" if side == "wide" else "k_deep")

    def penalty(self, factor: float, side: str = "wide") -> np.ndarray:
        """Relative loss increase L/L* - 1 of a shape `factor`x wider (or deeper) than r*."""
        return self.k(side) * math.log(factor) ** 2

    def drift(self) -> np.ndarray | None:
        """Per-draw least-squares slope of ln r* on ln N (None with one level)."""
        if len(self.levels) < 2:
            return None
        x = np.log(self.n_level)
        x = x - x.mean()
        y = np.log(self.r_star())
        return (y - y.mean(1, keepdims=True)) @ x / (x @ x)

    def relative_curve(self, r: np.ndarray) -> np.ndarray:
        """(draws, levels, len(r)) of L/L* = 1 + pen on an aspect-ratio grid."""
        d = np.log(r)[None, None, :] - np.log(self.r_star())[:, :, None]
        kw, kd = self.k("wide")[:, None, None], self.k("deep")[:, None, None]
        return 1.0 + kw * np.maximum(d, 0) ** 2 + kd * np.minimum(d, 0) ** 2

    def table(self) -> pd.DataFrame:
        """Per-level table: N, shapes, aspect range, r* and L* with 90% intervals, penalties."""

        rs, ls = self.r_star(), self.l_star()
        rows = []
        for i, n in enumerate(self.levels):
            g = self.data[self.data["level"] == n]
            q = np.quantile(rs[:, i], QUANTILES)
            row = {
                "N_target": n,
                "N": self.n_level[i],
                "shapes": len(g),
                "r_min": g["aspect_ratio"].min(),
                "r_max": g["aspect_ratio"].max(),
                "best_observed_r": float(g.loc[g["loss"].idxmin(), "aspect_ratio"]),
                "best_observed_loss": g["loss"].min(),
                "r_star": q[1],
                "r_star_q5": q[0],
                "r_star_q95": q[2],
                "L_star": float(np.median(ls[:, i])),
                "L_star_q5": float(np.quantile(ls[:, i], 0.05)),
                "L_star_q95": float(np.quantile(ls[:, i], 0.95)),
                "bracketed": bool(g["aspect_ratio"].min() <= q[1] <= g["aspect_ratio"].max()),
            }
            L_opt, d_opt = optimal_shape(self.n_level[i], q[1], self._coeff())
            row["n_layers_at_r_star"], row["d_model_at_r_star"] = L_opt, d_opt
            rows.append(row)
        return pd.DataFrame(rows)

    def _coeff(self) -> float:
        d = self.data
        return float(np.median(d["N"] / (d["n_layers"] * d["d_model"] ** 2)))

    def penalties(self) -> dict[str, dict[str, float]]:
        """Penalty quantiles at 4x and 10x off the optimum (both sides) and across Kaplan's 40x."""
        out = {}
        for f in (4.0, 10.0, math.sqrt(KAPLAN_WINDOW)):
            for side in ("wide", "deep"):
                key = f"{f:.3g}x_{'wider' if side == 'wide' else 'deeper'}"
                out[key] = _qd(self.penalty(f, side))
        return out

    def summary(self) -> dict[str, Any]:
        """Everything a report needs, as plain floats."""
        dr = self.drift()
        return {
            "levels": self.table().to_dict(orient="records"),
            "k": _qd(self.k("wide")) if not self.asymmetric else None,
            "k_wide": _qd(self.k("wide")) if self.asymmetric else None,
            "k_deep": _qd(self.k("deep")) if self.asymmetric else None,
            "penalty": self.penalties(),
            "drift_slope": None if dr is None else _qd(dr),
            "fit": {
                "method": self.result.method,
                "ok": self.ok,
                "problems": list(self.result.problems),
                "sigma": _qd(self.result.flat("sigma")),
                "max_r_hat": self.result.diagnostics.get("max_r_hat"),
                "min_ess": self.result.diagnostics.get("min_ess"),
                "divergences": self.result.diagnostics.get("divergences"),
            },
            "sentence": self.sentence(),
        }

    def sentence(self) -> str:
        """The comparison with Kaplan et al. 2020's finding, in words with intervals."""
        f = math.sqrt(KAPLAN_WINDOW)
        pw, pd_ = self.penalty(f, "wide"), self.penalty(f, "deep")
        worst = np.maximum(pw, pd_) if self.asymmetric else pw
        lo, med, hi = np.quantile(worst, QUANTILES)
        p4 = _fmt_pct(self.penalty(4.0, "wide"))
        p10 = _fmt_pct(self.penalty(10.0, "wide"))
        if self.asymmetric:
            p4 += f" wider / {_fmt_pct(self.penalty(4.0, 'deep'))} deeper"
            p10 += f" wider / {_fmt_pct(self.penalty(10.0, 'deep'))} deeper"
        kaplan = (
            f"Kaplan et al. 2020 (Fig. 5: a few percent over a {KAPLAN_WINDOW:.0f}x range; "
            f"(6, 4288) within {100 * KAPLAN_PENALTY:.0f}% of (48, 1600))"
        )
        if hi <= KAPLAN_PENALTY:
            verdict = f"consistent with {kaplan}"
        elif lo > KAPLAN_PENALTY:
            verdict = f"a stronger shape dependence than {kaplan}"
        else:
            verdict = f"not distinguishable at this precision from {kaplan}"
        text = (
            f"Across a {KAPLAN_WINDOW:.0f}x window of aspect ratio centred on the optimum "
            f"(shapes {f:.1f}x off r*), the loss rises by {100 * med:.2f}% "
            f"(90% interval {100 * lo:.2f}-{100 * hi:.2f}%): {verdict}. "
            f"A shape 4x off r* costs {p4}; 10x off costs {p10}."
        )
        rs = self.r_star()
        parts = []
        for i, n in enumerate(self.levels):
            q = np.quantile(rs[:, i], QUANTILES)
            parts.append(f"N={n:.3g}: r*={q[1]:.3g} [{q[0]:.3g}, {q[2]:.3g}]")
        text += " Optimal aspect ratio d_model/n_layers " + "; ".join(parts) + "."
        dr = self.drift()
        if dr is not None:
            q = np.quantile(dr, QUANTILES)
            moves = "drifts" if q[0] > 0 or q[2] < 0 else "shows no resolved drift"
            text += (
                f" r* {moves} with scale: d ln r*/d ln N = {q[1]:.2f} "
                f"(90% interval {q[0]:.2f} to {q[2]:.2f})."
            )
        tab = self.table()
        out = tab[~tab["bracketed"]]
        if len(out):
            where = ", ".join(f"{n:.3g}" for n in out["N_target"])
            text += (
                f" CAVEAT: at N={where} the optimum lies outside the measured aspect ratios, so "
                "r* and the penalties there are extrapolations; extend the grid past it."
            )
        if not self.ok:
            text += " WARNING: the fit failed its diagnostics; " + "; ".join(self.result.problems)
        return textwrap.fill(text, 100)

    def describe(self) -> str:
        """Per-level table, penalties and drift with 90% intervals, then the Kaplan comparison."""
        return f"{_text_table(self)}\n\n{self.sentence()}"

    def plot(self, out_dir: str | Path) -> list[Path]:
        """Kaplan 2020 Fig. 5 style: relative loss vs aspect ratio per N (left), r*(N) (right)."""
        return _plot(self, Path(out_dir))

    def save(self, out_dir: str | Path, *, plots: bool = True) -> list[Path]:
        """Write shape_table.csv, shape_data.csv, shape_summary.json, shape_report.txt, plot."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [
            out / "shape_table.csv",
            out / "shape_data.csv",
            out / "shape_summary.json",
            out / "shape_report.txt",
        ]
        self.table().to_csv(paths[0], index=False)
        self.data.to_csv(paths[1], index=False)
        paths[2].write_text(json.dumps(self.summary(), indent=2, default=float))
        paths[3].write_text(self.describe() + "\n")
        if plots:
            paths += self.plot(out)
        return paths


def optimal_shape(n: float, r: float, c: float = 12.0) -> tuple[float, float]:
    """(n_layers, d_model) with d/L = r and c L d^2 = N (Kaplan 2020 eq. 2.1, c = 12)."""
    L = (n / (c * r**2)) ** (1 / 3)
    return float(L), float(r * L)


def _qd(v: np.ndarray) -> dict[str, float]:
    q = np.quantile(np.asarray(v, float), QUANTILES)
    return {"q5": float(q[0]), "median": float(q[1]), "q95": float(q[2])}


def _fmt_pct(v: np.ndarray) -> str:
    q = np.quantile(v, QUANTILES)
    return f"{100 * q[1]:.2f}% [{100 * q[0]:.2f}, {100 * q[2]:.2f}]"


def fit_penalty(
    source: Any,
    *,
    asymmetric: bool = False,
    method: str = "nuts",
    priors: Mapping[str, Any] | None = None,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 0,
    quiet: bool = False,
) -> ShapeFit:
    """Fit the aspect-ratio penalty jointly over N levels (shape_table rows or a results dir).

    Shared curvature k (or k_wide/k_deep), free L*_i and r*_i per level; Student-t residuals on
    log loss with fitted sigma (jaxscale.fit). Each level needs >= 2 distinct aspect ratios.
    """

    df = source if isinstance(source, pd.DataFrame) and "level" in source else shape_table(source)
    levels = np.sort(df["level"].unique())
    for n in levels:
        g = df[df["level"] == n]
        if g["aspect_ratio"].nunique() < 2:
            raise ValueError(
                f"level N={n:.3g} has {g['aspect_ratio'].nunique()} distinct aspect ratio(s); "
                "a penalty fit needs at least 2 per level (3+ to locate the optimum)"
            )
    fm = penalty_form(len(levels), asymmetric=asymmetric)
    idx = np.searchsorted(levels, df["level"].to_numpy())
    data = {"r": df["aspect_ratio"].to_numpy(float), "loss": df["loss"].to_numpy(float)}
    if len(levels) > 1:
        data["g"] = (idx + 1).astype(float)
    pri = {**default_priors(df), **(priors or {})}
    res = F.fit(
        data,
        fm,
        method=method,
        priors=pri,
        chains=chains,
        warmup=warmup,
        draws=draws,
        seed=seed,
        quiet=quiet,
    )
    n_level = np.array([np.exp(np.log(df.loc[df["level"] == n, "N"]).mean()) for n in levels])
    return ShapeFit(df, levels, n_level, res, asymmetric)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def _plot(sf: ShapeFit, out: Path) -> list[Path]:
    plt = plotting.pyplot()
    import matplotlib.ticker  # lazy, like pyplot

    d = sf.data
    r = np.geomspace(d["aspect_ratio"].min() / 1.5, d["aspect_ratio"].max() * 1.5, 120)
    curve = sf.relative_curve(r)
    ls = sf.l_star()
    rs = sf.r_star()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11.5, 4.3), width_ratios=(1.6, 1))
    for i, n in enumerate(sf.levels):
        col = plt.cm.viridis(i / max(1, len(sf.levels) - 1) * 0.85)
        g = d[d["level"] == n]
        rel = 100 * (g["loss"] / np.median(ls[:, i]) - 1)
        plotting.quantile_band(
            a0, r, 100 * (curve[:, i] - 1), color=col, label=f"N = {n:.3g}", alpha=0.18, lw=1.5
        )
        a0.scatter(g["aspect_ratio"], rel, color=col, s=22, zorder=3, edgecolor="k", lw=0.4)
        a0.axvline(np.median(rs[:, i]), color=col, ls=":", lw=1)
    a0.axhline(0, color="0.5", lw=0.6)
    a0.set_xscale("log")
    a0.set_xlabel("aspect ratio d_model / n_layers")
    a0.set_ylabel("loss increase over the best shape (%)")
    a0.set_title("loss vs shape at fixed N (cf. Kaplan 2020 Fig. 5); bands 90%", fontsize=9)
    a0.legend(fontsize=8)
    q = np.quantile(rs, [0.05, 0.5, 0.95], axis=0)
    a1.errorbar(sf.n_level, q[1], yerr=[q[1] - q[0], q[2] - q[1]], fmt="o", color="C3", capsize=3)
    dr = sf.drift()
    if dr is not None:
        ng = np.geomspace(sf.n_level.min() / 1.3, sf.n_level.max() * 1.3, 40)
        x0 = np.log(sf.n_level).mean()
        lr_mean = np.log(rs).mean(1)
        lines = np.exp(lr_mean[:, None] + dr[:, None] * (np.log(ng)[None] - x0))
        plotting.quantile_band(a1, ng, lines, color="C3", lw=1)
        sq = np.quantile(dr, [0.05, 0.5, 0.95])
        a1.set_title(f"r*(N): slope {sq[1]:.2f} [{sq[0]:.2f}, {sq[2]:.2f}] (90%)", fontsize=9)
    else:
        a1.set_title("r* (90% interval)", fontsize=9)
    plotting.log_axes(a1)
    fmt = matplotlib.ticker.FormatStrFormatter("%.3g")
    a1.yaxis.set_major_formatter(fmt)
    a1.yaxis.set_minor_formatter(fmt)
    a1.set_xlabel("non-embedding N")
    a1.set_ylabel("optimal aspect ratio r*")
    fig.tight_layout()
    return plotting.save_figure(fig, out / "shape")


def _text_table(sf: ShapeFit) -> str:
    """Plain-text per-level table plus penalties and drift, with 90% intervals."""
    lines = [
        f"{'N':>10} {'shapes':>6} {'r range':>15} {'r* [90%]':>26} {'L* [90%]':>24} "
        f"{'(L, d) at r*':>14}"
    ]
    for row in sf.table().to_dict(orient="records"):
        edge = "" if row["bracketed"] else "  (optimum outside the grid)"
        lines.append(
            f"{row['N']:>10.3g} {row['shapes']:>6d} "
            f"{row['r_min']:>7.3g}-{row['r_max']:<7.3g} "
            f"{row['r_star']:>8.3g} [{row['r_star_q5']:.3g}, {row['r_star_q95']:.3g}]".ljust(49)
            + f" {row['L_star']:>7.4f} [{row['L_star_q5']:.4f}, {row['L_star_q95']:.4f}]"
            f"  ({row['n_layers_at_r_star']:.1f}, {row['d_model_at_r_star']:.0f}){edge}"
        )
    lines.append("loss penalty relative to the best shape (median [5%, 95%]):")
    for k, v in sf.penalties().items():
        lines.append(
            f"  {k:>14}: {100 * v['median']:6.2f}%  [{100 * v['q5']:.2f}, {100 * v['q95']:.2f}]"
        )
    dr = sf.drift()
    if dr is not None:
        q = _qd(dr)
        lines.append(
            f"drift of r* with N: d ln r*/d ln N = {q['median']:.3f} "
            f"[{q['q5']:.3f}, {q['q95']:.3f}]"
        )
    return "\n".join(lines)
