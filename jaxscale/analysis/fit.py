"""Bayesian scaling-law fitter: registered functional forms, NUTS / Laplace / Huber-bootstrap fits.

A *form* is a function of named (positive) inputs and named parameters returning the log of the
predicted loss, plus a weakly-informative prior per parameter. Register your own with
:func:`register_form`; every fitting routine here works on any registered form::

    from jaxscale.analysis import fit as F
    F.register_form(F.Form(
        name="width_depth",
        inputs=("r",),
        priors={"log_Lstar": F.Prior("normal", 1.0, 1.0),
                "k": F.Prior("lognormal", -3.0, 1.0),
                "log_rstar": F.Prior("normal", 4.0, 2.0)},
        log_loss=lambda lx, p: p["log_Lstar"] + jnp.log1p(p["k"] * (lx["r"] - p["log_rstar"]) ** 2),
        reference="Kaplan et al. 2020, Fig. 5 (aspect-ratio penalty)",
    ))
    res = F.fit({"r": r, "loss": loss}, form="width_depth")   # NUTS, 4 chains
    print(res.summary())

``lx`` holds the *log* of every input; parameters named ``log_X`` are reported also as ``X``.
Observations enter through residuals on log loss (Student-t by default, Gaussian optional) with a
fitted scale ``sigma``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import scipy.stats as st
from scipy import stats

from jaxscale.runs import results  # lazy: runs-dir support only

# Quantities a form may take as inputs; CSV/run tables are mapped onto these names.
INPUT_NAMES = ("N", "D", "C", "S")
NOISES = ("student_t", "gaussian")
METHODS = ("nuts", "map", "laplace", "bootstrap")

# Diagnostic thresholds (Vehtari et al. 2021, "Rank-normalization, folding, and localization").
RHAT_MAX = 1.01
ESS_MIN_PER_CHAIN = 100


# --------------------------------------------------------------------------------------------
# Priors and forms
# --------------------------------------------------------------------------------------------

_PRIOR_FAMILIES = {
    # family: (parameter names, positive support?)
    "normal": (("loc", "scale"), False),
    "lognormal": (("loc", "scale"), True),
    "halfnormal": (("scale",), True),
    "gamma": (("concentration", "rate"), True),
    "exponential": (("rate",), True),
    "uniform": (("low", "high"), False),
}


@dataclass(frozen=True)
class Prior:
    """A prior as (family, a, b); lognormal/halfnormal/gamma/exponential live on x > 0."""

    family: str
    a: float
    b: float = float("nan")

    def __post_init__(self) -> None:
        if self.family not in _PRIOR_FAMILIES:
            raise ValueError(
                f"Prior.family: unknown {self.family!r}; choose one of {sorted(_PRIOR_FAMILIES)}"
            )
        names, _ = _PRIOR_FAMILIES[self.family]
        vals = (self.a, self.b)[: len(names)]
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"Prior {self.family}: parameters {names} must be finite, got {vals}")
        if self.family == "uniform" and not self.a < self.b:
            raise ValueError(f"Prior uniform: need low < high, got {self.a}, {self.b}")
        if self.family != "uniform" and self.family != "normal" and vals[-1] <= 0:
            raise ValueError(f"Prior {self.family}: {names[-1]} must be > 0, got {vals[-1]}")
        if self.family == "normal" and self.b <= 0:
            raise ValueError(f"Prior normal: scale must be > 0, got {self.b}")

    @property
    def args(self) -> tuple[float, float]:
        return (float(self.a), 0.0 if math.isnan(self.b) else float(self.b))

    def __str__(self) -> str:
        names, _ = _PRIOR_FAMILIES[self.family]
        vals = ", ".join(f"{v:g}" for v in (self.a, self.b)[: len(names)])
        return f"{self.family}({vals})"


def _prior_dist(family: str, ab: Any) -> Any:
    """numpyro distribution for a prior family with (possibly traced) parameters ab = (a, b)."""
    import numpyro.distributions as dist

    a, b = ab[0], ab[1]
    return {
        "normal": lambda: dist.Normal(a, b),
        "lognormal": lambda: dist.LogNormal(a, b),
        "halfnormal": lambda: dist.HalfNormal(a),
        "gamma": lambda: dist.Gamma(a, b),
        "exponential": lambda: dist.Exponential(a),
        "uniform": lambda: dist.Uniform(a, b),
    }[family]()


@dataclass(frozen=True)
class Form:
    """A scaling-law form: log_loss(lx, p) -> log L with lx = {input: log(input)}, plus priors."""

    name: str
    inputs: tuple[str, ...]
    priors: Mapping[str, Prior]
    log_loss: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]
    reference: str = ""
    description: str = ""
    # Starting grid for the Huber/L-BFGS baseline (param -> values); default: prior quantiles.
    grid: Mapping[str, Sequence[float]] | None = None
    # Sampling reparameterisation (param -> (coefficient param or None, input)): the sampler
    # draws param - coef * mean(log input) instead of param, which straightens the ridge
    # log_A - alpha*log N (corr. 0.999 on Chinchilla data) that otherwise forces tiny NUTS steps.
    # Unit-Jacobian shear, so the prior stays on the natural param. Needs a 'normal' prior.
    shear: Mapping[str, tuple[str | None, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError(f"Form {self.name!r}: needs at least one input")
        if not self.priors:
            raise ValueError(f"Form {self.name!r}: needs at least one parameter prior")
        if "sigma" in self.priors:
            raise ValueError(f"Form {self.name!r}: 'sigma' is reserved for the noise scale")
        for k, v in self.priors.items():
            if not isinstance(v, Prior):
                raise ValueError(f"Form {self.name!r}: prior for {k!r} must be a fit.Prior")
        for k, (coef, inp) in dict(self.shear).items():
            if k not in self.priors or self.priors[k].family != "normal":
                raise ValueError(f"Form {self.name!r}: shear param {k!r} needs a 'normal' prior")
            if coef is not None and (coef not in self.priors or coef in self.shear):
                raise ValueError(f"Form {self.name!r}: shear coefficient {coef!r} must be a param")
            if inp not in self.inputs:
                raise ValueError(f"Form {self.name!r}: shear input {inp!r} not in inputs")
        object.__setattr__(self, "shear", dict(self.shear))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "priors", dict(self.priors))

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(self.priors)

    @property
    def sites(self) -> tuple[str, ...]:
        """Sampled site names, in the order of the unconstrained vector."""
        plain = [n for n in (*self.params, "sigma") if n not in self.shear]
        return (*plain, *(f"{n}_c" for n in self.shear))

    @property
    def min_points(self) -> int:
        # parameters + noise scale + at least one residual degree of freedom
        return len(self.priors) + 2


_FORMS: dict[str, Form] = {}
NOISE_PRIOR = Prior("halfnormal", 0.1)  # sigma of log-loss residuals; a few % of loss is typical


def register_form(form: Form, *, overwrite: bool = False) -> Form:
    """Register a form under form.name so fit()/predict()/CLI can use it by name."""
    if form.name in _FORMS and not overwrite:
        raise ValueError(f"form {form.name!r} is already registered; pass overwrite=True")
    _FORMS[form.name] = form
    return form


def get_form(form: str | Form) -> Form:
    """Look up a registered form by name (a Form passes through)."""
    if isinstance(form, Form):
        return form
    if form not in _FORMS:
        raise ValueError(f"unknown form {form!r}; registered forms: {sorted(_FORMS)}")
    return _FORMS[form]


def list_forms() -> dict[str, str]:
    """Registered form names with their references."""
    return {k: f.reference for k, f in _FORMS.items()}


def _lse(*xs: Any) -> Any:

    return jnp.logaddexp(xs[0], _lse(*xs[1:])) if len(xs) > 1 else xs[0]


def _chinchilla_log_loss(lx: Mapping[str, Any], p: Mapping[str, Any]) -> Any:
    # Hoffmann 2022 eq. 2 as LSE(e, a - alpha log N, b - beta log D) (Besiroglu 2024 sec. 2)
    return _lse(p["log_E"], p["log_A"] - p["alpha"] * lx["N"], p["log_B"] - p["beta"] * lx["D"])


def _kaplan_nd_log_loss(lx: Mapping[str, Any], p: Mapping[str, Any]) -> Any:
    # Kaplan 2020 eq. 1.5: L = [(Nc/N)^(aN/aD) + Dc/D]^aD
    t_N = (p["alpha_N"] / p["alpha_D"]) * (p["log_Nc"] - lx["N"])
    return p["alpha_D"] * _lse(t_N, p["log_Dc"] - lx["D"])


def _kaplan_ns_log_loss(lx: Mapping[str, Any], p: Mapping[str, Any]) -> Any:
    # Kaplan 2020 eq. 1.6: L = (Nc/N)^aN + (Sc/S)^aS
    return _lse(p["alpha_N"] * (p["log_Nc"] - lx["N"]), p["alpha_S"] * (p["log_Sc"] - lx["S"]))


def power_law_form(x: str) -> Form:
    """One-variable law L(x) = E + A x^-alpha (Kaplan 2020 eqs. 1.1-1.3 plus irreducible E)."""

    def log_loss(lx: Mapping[str, Any], p: Mapping[str, Any]) -> Any:
        return _lse(p["log_E"], p["log_A"] - p["alpha"] * lx[x])

    return Form(
        name=f"power_{x}",
        inputs=(x,),
        priors={
            "log_E": Prior("normal", 0.5, 1.0),
            "log_A": Prior("normal", 5.0, 5.0),
            "alpha": Prior("lognormal", math.log(0.3), 1.0),
        },
        log_loss=log_loss,
        reference="Kaplan et al. 2020 (eqs. 1.1-1.3); Hoffmann et al. 2022 (irreducible term E)",
        description=f"L({x}) = E + A*{x}^-alpha",
        shear={"log_A": ("alpha", x)},
    )


CHINCHILLA = Form(
    name="chinchilla",
    inputs=("N", "D"),
    priors={
        "log_E": Prior("normal", 0.5, 1.0),
        "log_A": Prior("normal", 6.0, 3.0),
        "log_B": Prior("normal", 7.0, 3.0),
        "alpha": Prior("lognormal", -1.0, 0.75),
        "beta": Prior("lognormal", -1.0, 0.75),
    },
    log_loss=_chinchilla_log_loss,
    reference="Hoffmann et al. 2022, eq. 2 / App. D; Besiroglu et al. 2024 (LSE form)",
    description="L(N, D) = E + A/N^alpha + B/D^beta",
    shear={"log_A": ("alpha", "N"), "log_B": ("beta", "D")},
    # Besiroglu 2024 / Epoch analyzing-chinchilla initialisation grid (4500 points)
    grid={
        "log_E": np.arange(-1.0, 1.5, 0.5),
        "log_A": np.arange(0.0, 30.0, 5.0),
        "log_B": np.arange(0.0, 30.0, 5.0),
        "alpha": np.arange(0.0, 2.5, 0.5),
        "beta": np.arange(0.0, 2.5, 0.5),
    },
)

KAPLAN_ND = Form(
    name="kaplan_nd",
    inputs=("N", "D"),
    priors={
        "log_Nc": Prior("normal", 30.0, 5.0),
        "log_Dc": Prior("normal", 30.0, 5.0),
        "alpha_N": Prior("lognormal", math.log(0.08), 0.75),
        "alpha_D": Prior("lognormal", math.log(0.1), 0.75),
    },
    log_loss=_kaplan_nd_log_loss,
    reference="Kaplan et al. 2020, eq. 1.5",
    description="L(N, D) = [(Nc/N)^(aN/aD) + Dc/D]^aD",
    shear={"log_Nc": (None, "N"), "log_Dc": (None, "D")},
)

KAPLAN_NS = Form(
    name="kaplan_ns",
    inputs=("N", "S"),
    priors={
        "log_Nc": Prior("normal", 30.0, 5.0),
        "log_Sc": Prior("normal", 8.0, 4.0),
        "alpha_N": Prior("lognormal", math.log(0.08), 0.75),
        "alpha_S": Prior("lognormal", math.log(0.76), 0.75),
    },
    log_loss=_kaplan_ns_log_loss,
    reference="Kaplan et al. 2020, eq. 1.6 (learning curves)",
    description="L(N, S) = (Nc/N)^aN + (Sc/S)^aS",
    shear={"log_Nc": (None, "N"), "log_Sc": (None, "S")},
)

for _f in (CHINCHILLA, KAPLAN_ND, KAPLAN_NS, *(power_law_form(x) for x in INPUT_NAMES)):
    register_form(_f)


def _resolve_priors(form: Form, priors: Mapping[str, Prior] | None) -> dict[str, Prior]:
    out = {**form.priors, "sigma": NOISE_PRIOR}
    for k, v in (priors or {}).items():
        if k not in out:
            raise ValueError(f"priors: {k!r} is not a parameter of {form.name!r}; have {list(out)}")
        if not isinstance(v, Prior):
            raise ValueError(f"priors[{k!r}]: expected fit.Prior, got {type(v).__name__}")
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# The numpyro model
# --------------------------------------------------------------------------------------------


def numpyro_model(
    lx: Mapping[str, Any],
    log_y: Any = None,
    *,
    form: str | Form,
    families: Sequence[str] | None = None,
    prior_args: Any = None,
    centers: Mapping[str, Any] | None = None,
    noise: str = "student_t",
    df: float = 4.0,
) -> None:
    """numpyro model of log loss: log y ~ StudentT(df, form.log_loss(lx, p), sigma) (or Normal).

    ``lx`` maps input names to log inputs; ``log_y`` is the observed log loss (None gives the
    likelihood-free model, e.g. for predictive use). ``families``/``prior_args`` ((P, 2) array,
    order = form params then sigma) override the priors (default: the form's, sigma ~
    HalfNormal(0.1)). ``centers`` ({input: mean log input}) sets the shear reparameterisation.
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    fm = get_form(form)
    names = (*fm.params, "sigma")
    if families is None:
        pri = _resolve_priors(fm, None)
        families = tuple(pri[n].family for n in names)
        prior_args = jnp.asarray([pri[n].args for n in names])
    d = {n: _prior_dist(f, prior_args[i]) for i, (n, f) in enumerate(zip(names, families))}
    centers = centers or {k: jnp.mean(v) for k, v in lx.items()}
    p = {n: numpyro.sample(n, d[n]) for n in names if n not in fm.shear}
    for n, (coef, inp) in fm.shear.items():
        s = numpyro.sample(f"{n}_c", dist.ImproperUniform(constraints.real, (), ()))
        p[n] = numpyro.deterministic(n, s + (1.0 if coef is None else p[coef]) * centers[inp])
        numpyro.factor(f"{n}_prior", d[n].log_prob(p[n]))  # shear has unit Jacobian
    mu = fm.log_loss(lx, p)
    mu = jnp.broadcast_to(mu, jnp.shape(next(iter(lx.values()))))
    with numpyro.plate("data", mu.shape[0]):
        if noise == "student_t":
            numpyro.sample("obs", dist.StudentT(df, mu, p["sigma"]), obs=log_y)
        else:
            numpyro.sample("obs", dist.Normal(mu, p["sigma"]), obs=log_y)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

_CSV_ALIASES = {
    "Model Size": "N",
    "Training FLOP": "C",
    "Tokens": "D",
    "Steps": "S",
    "Loss": "loss",
}


def prepare_data(
    data: Any, form: str | Form, *, target: str = "loss"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Validate a DataFrame/dict of inputs + loss for a form; returns ({input: x}, loss)."""

    fm = get_form(form)
    df = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    df = df.rename(columns={k: v for k, v in _CSV_ALIASES.items() if k in df and v not in df})
    if "D" not in df and {"N", "C"} <= set(df):
        df["D"] = df["C"] / (6.0 * df["N"])  # C = 6ND (Kaplan 2020 sec. 2.1)
    if "C" not in df and {"N", "D"} <= set(df):
        df["C"] = 6.0 * df["N"] * df["D"]
    missing = [c for c in (*fm.inputs, target) if c not in df]
    if missing:
        raise ValueError(
            f"data is missing column(s) {missing} needed by form {fm.name!r} "
            f"(inputs {list(fm.inputs)} + {target!r}); available: {list(df.columns)}"
        )
    y = np.asarray(df[target], dtype=np.float64)
    bad = ~np.isfinite(y) | (y <= 0)
    if bad.any():
        raise ValueError(
            f"{target}: {int(bad.sum())} value(s) are non-positive or non-finite "
            f"(rows {np.flatnonzero(bad)[:10].tolist()}); the fit works on log {target}, drop them"
        )
    x = {}
    for c in fm.inputs:
        v = np.asarray(df[c], dtype=np.float64)
        badx = ~np.isfinite(v) | (v <= 0)
        if badx.any():
            raise ValueError(
                f"input {c}: {int(badx.sum())} value(s) are non-positive or non-finite "
                f"(rows {np.flatnonzero(badx)[:10].tolist()})"
            )
        if np.unique(v).size < 2:
            raise ValueError(
                f"input {c}: all {v.size} points are at {c} = {v[0]:g}; a {fm.name!r} fit needs "
                f"spread in {c} (at least two distinct values)"
            )
        x[c] = v
    if y.size < fm.min_points:
        raise ValueError(
            f"too few points for form {fm.name!r}: got {y.size}, need at least {fm.min_points} "
            f"({len(fm.priors)} parameters + noise scale + 1)"
        )
    return x, y


def load_fit_data(source: Any, *, flops_convention: str | None = None) -> Any:
    """Load a table with N/D/C/S/loss from a CSV path, a runs directory, or a DataFrame/dict."""

    if isinstance(source, pd.DataFrame | Mapping):
        return pd.DataFrame(source) if isinstance(source, Mapping) else source.copy()
    path = Path(source)
    if not path.exists():
        raise ValueError(f"fit input {str(path)!r} does not exist (expected a CSV or a runs dir)")
    if path.is_file():
        df = pd.read_csv(path)
        df = df.rename(columns={k: v for k, v in _CSV_ALIASES.items() if k in df})
        if flops_convention is not None and f"flops_{flops_convention}" in df:
            df["C"] = df[f"flops_{flops_convention}"]
        return df

    runs, _ = results.load(path)
    if "status" in runs:
        # Only finished runs are points on a scaling law; diverged, failed, preempted and
        # incomplete runs are left out, loudly.
        bad = runs["status"] != "done"
        if bad.any():
            kinds = ", ".join(f"{n} {k}" for k, n in runs.loc[bad, "status"].value_counts().items())
            msg = f"excluding {int(bad.sum())} unfinished run(s) from the fit ({kinds})"
            warnings.warn(msg, stacklevel=2)
            print(f"warning: {msg}")
        runs = runs[~bad]
    flops_cols = [c for c in runs.columns if c.startswith("flops_")]
    if flops_convention is None and len(flops_cols) > 1:
        raise ValueError(
            f"runs table has several FLOP conventions {flops_cols}; pick one with "
            "--flops-convention / flops_convention="
        )
    col = f"flops_{flops_convention}" if flops_convention else (flops_cols or [None])[0]
    if col is not None and col not in runs:
        raise ValueError(f"flops convention {flops_convention!r} not in runs table: {flops_cols}")
    out = pd.DataFrame({"N": runs["n_params_nonembedding"], "D": runs["tokens"]})
    if col is not None:
        out["C"] = runs[col]
    for c in ("steps", "S"):
        if c in runs:
            out["S"] = runs[c]
    out["loss"] = runs["loss"]
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Compiled programs (cached by structure; data and prior parameters are traced arguments)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    form: str
    families: tuple[str, ...]
    noise: str
    df: float


def _spec_model(spec: _Spec) -> Callable[..., None]:
    return functools.partial(
        numpyro_model, form=spec.form, families=spec.families, noise=spec.noise, df=spec.df
    )


def _unravel(spec: _Spec, u_K: Any) -> dict[str, Any]:
    return {n: u_K[..., i] for i, n in enumerate(get_form(spec.form).sites)}


def _constrain_with_args(spec: _Spec, u_K: Any, prior_args: Any, centers: Any) -> dict[str, Any]:
    """Unconstrained vector -> natural parameters (numpyro biject_to per support, then shear)."""
    from numpyro.distributions.transforms import biject_to

    fm = get_form(spec.form)
    z = _unravel(spec, u_K)
    p = {}
    for i, (n, fam) in enumerate(zip((*fm.params, "sigma"), spec.families)):
        if n not in fm.shear:
            p[n] = biject_to(_prior_dist(fam, prior_args[i]).support)(z[n])
    for n, (coef, inp) in fm.shear.items():
        p[n] = z[f"{n}_c"] + (1.0 if coef is None else p[coef]) * centers[inp]
    return p


def _potential(spec: _Spec, u_K: Any, lx: Any, log_y: Any, prior_args: Any, centers: Any) -> Any:
    from numpyro.infer.util import potential_energy

    kw = {"prior_args": prior_args, "centers": centers}
    return potential_energy(_spec_model(spec), (lx, log_y), kw, _unravel(spec, u_K))


def _lbfgs(f: Callable[[Any], Any], u0: Any, iters: int, rtol: float = 1e-7) -> tuple[Any, Any]:
    """L-BFGS (optax, zoom line search) until |grad| <= rtol (1 + |f|) or `iters` steps."""

    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)

    def cond(c: Any) -> Any:
        return (c[2] < iters) & (c[3] > rtol * (1.0 + jnp.abs(c[4])))

    def body(c: Any) -> Any:
        u, s, i, _, _ = c
        v, g = vg(u, state=s)
        upd, s = opt.update(g, s, u, value=v, grad=g, value_fn=f)
        gn = optax.tree_utils.tree_norm(g)
        return optax.apply_updates(u, upd), s, i + 1, jnp.where(jnp.isfinite(gn), gn, 0.0), v

    big, zero = jnp.asarray(jnp.inf, u0.dtype), jnp.asarray(0.0, u0.dtype)
    u, *_ = jax.lax.while_loop(cond, body, (u0, opt.init(u0), 0, big, zero))
    v = f(u)
    return u, jnp.where(jnp.isfinite(v), v, jnp.inf)


def _newton(f: Callable[[Any], Any], u0: Any, iters: int) -> tuple[Any, Any]:
    """Levenberg-damped Newton with |eigenvalue| Hessian (cheap to compile for few params)."""

    vg, hess = jax.value_and_grad(f), jax.hessian(f)

    def body(i: Any, c: Any) -> Any:
        u, v, lam = c
        _, g = vg(u)
        w, V = jnp.linalg.eigh(hess(u))
        step = V @ ((V.T @ g) / (jnp.abs(w) + lam))
        un = u - step
        vn = f(un)
        ok = jnp.isfinite(vn) & (vn < v) & jnp.all(jnp.isfinite(un))
        return (jnp.where(ok, un, u), jnp.where(ok, vn, v), jnp.where(ok, lam * 0.2, lam * 10.0))

    v0 = f(u0)
    v0 = jnp.where(jnp.isfinite(v0), v0, jnp.inf)
    u, v, _ = jax.lax.fori_loop(0, iters, body, (u0, v0, jnp.asarray(1.0, u0.dtype)))
    return u, v


@functools.lru_cache(maxsize=64)
def _map_program(spec: _Spec, iters: int) -> Callable[..., Any]:

    def run(u0_MxK: Any, lx: Any, log_y: Any, prior_args: Any, centers: Any) -> Any:
        f = lambda u: _potential(spec, u, lx, log_y, prior_args, centers)
        u_MxK, v_M = jax.vmap(lambda u0: _newton(f, u0, iters))(u0_MxK)
        best = jax.numpy.argmin(v_M)
        u = u_MxK[best]
        return u, v_M[best], jax.hessian(f)(u), v_M

    return jax.jit(run)


@functools.lru_cache(maxsize=64)
def _nuts_program(
    spec: _Spec,
    num_warmup: int,
    num_samples: int,
    target_accept: float,
    max_tree_depth: int,
    parallel: bool,
) -> Callable[..., Any]:
    from numpyro.infer.hmc import hmc

    def pe_gen(lx: Any, log_y: Any, prior_args: Any, centers: Any) -> Callable[[Any], Any]:
        return lambda u: _potential(spec, u, lx, log_y, prior_args, centers)

    def chain(key: Any, u0_K: Any, inv_mass_KxK: Any, lx: Any, log_y: Any, pa: Any, ce: Any) -> Any:
        # fresh kernels per trace: hmc() keeps adaptation config in closure state
        init_kernel, sample_kernel = hmc(potential_fn_gen=pe_gen, algo="NUTS")
        args = (lx, log_y, pa, ce)
        st = init_kernel(
            u0_K,
            num_warmup,
            inverse_mass_matrix=inv_mass_KxK,
            dense_mass=True,
            target_accept_prob=target_accept,
            max_tree_depth=max_tree_depth,
            model_args=args,
            rng_key=key,
        )

        def warm(i: Any, s: Any) -> Any:
            return sample_kernel(s, model_args=args)

        st = jax.lax.fori_loop(0, num_warmup, warm, st)

        def body(s: Any, _: Any) -> Any:
            s = sample_kernel(s, model_args=args)
            return s, (s.z, s.diverging, s.num_steps, s.accept_prob)

        st, tr = jax.lax.scan(body, st, None, length=num_samples)
        return tr, st.adapt_state.step_size

    vchain = jax.vmap(chain, in_axes=(0, 0, None, None, None, None, None))
    if not parallel:
        return jax.jit(vchain)
    return jax.pmap(vchain, in_axes=(0, 0, None, None, None, None, None))


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """Posterior (or point/bootstrap) draws of one form on one dataset, with diagnostics."""

    form: str
    method: str
    samples: dict[str, np.ndarray]  # name -> (chains, draws)
    inputs: dict[str, np.ndarray]
    loss: np.ndarray
    priors: dict[str, str]
    noise: str
    df: float
    diagnostics: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    point: dict[str, float] = field(default_factory=dict)  # MAP / Huber optimum
    seconds: float = 0.0
    log_lik: np.ndarray | None = None  # (chains, draws, n) for LOO/WAIC

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(self.samples)

    def flat(self, name: str) -> np.ndarray:
        """All draws of one quantity, chains concatenated."""
        return np.asarray(self.samples[name]).reshape(-1)

    def summary(self) -> Any:
        """Table of mean, median, 5%/95%, R-hat, bulk/tail ESS per parameter."""

        rows = {}
        for n, v in self.samples.items():
            f = np.asarray(v, dtype=np.float64).reshape(-1)
            d = self.diagnostics.get("per_param", {}).get(n, {})
            rows[n] = {
                "mean": f.mean(),
                "median": np.median(f),
                "q5": np.quantile(f, 0.05),
                "q95": np.quantile(f, 0.95),
                "sd": f.std(),
                "r_hat": d.get("r_hat", np.nan),
                "ess_bulk": d.get("ess_bulk", np.nan),
                "ess_tail": d.get("ess_tail", np.nan),
            }
        return pd.DataFrame.from_dict(rows, orient="index")

    def to_inference_data(self) -> Any:
        """arviz InferenceData (posterior, log_likelihood, sample_stats, observed_data)."""
        import arviz as az

        ll = None if self.log_lik is None else {"obs": self.log_lik}
        stats = {}
        if "divergences_per_draw" in self.diagnostics:
            stats["diverging"] = np.asarray(self.diagnostics["divergences_per_draw"])
        return az.from_dict(
            posterior={k: np.asarray(v) for k, v in self.samples.items()},
            log_likelihood=ll,
            sample_stats=stats or None,
            observed_data={"log_loss": np.log(self.loss)},
        )


def _with_natural(samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(samples)
    for k, v in samples.items():
        if k.startswith("log_") and k[4:] not in out:
            out[k[4:]] = np.exp(v)
    return out


def _diagnose(res: FitResult, divergences_CxS: np.ndarray | None) -> None:
    """Split R-hat, bulk/tail ESS, divergences; flag and warn loudly on failure."""
    import arviz as az

    base = {k: v for k, v in res.samples.items() if not k.startswith("log_") or True}
    C, S = next(iter(base.values())).shape
    per = {}
    problems = []
    ds = az.convert_to_dataset({k: np.asarray(v, np.float64) for k, v in base.items()})
    rhat = az.rhat(ds) if C > 1 else None
    essb = az.ess(ds, method="bulk")
    esst = az.ess(ds, method="tail")
    for k in base:
        r = float(rhat[k]) if rhat is not None else float("nan")
        per[k] = {"r_hat": r, "ess_bulk": float(essb[k]), "ess_tail": float(esst[k])}
    worst_r = max((v["r_hat"] for v in per.values()), default=float("nan"))
    min_ess = min(min(v["ess_bulk"], v["ess_tail"]) for v in per.values())
    n_div = int(divergences_CxS.sum()) if divergences_CxS is not None else 0
    if C > 1 and not worst_r <= RHAT_MAX:
        problems.append(
            f"split R-hat {worst_r:.3f} > {RHAT_MAX}: chains disagree — run longer "
            "(--warmup/--draws), tighten priors, or check for multimodality (try --method map)"
        )
    if min_ess < ESS_MIN_PER_CHAIN * C:
        problems.append(
            f"min bulk/tail ESS {min_ess:.0f} < {ESS_MIN_PER_CHAIN * C}: increase --draws "
            "or --chains"
        )
    if n_div:
        problems.append(
            f"{n_div} divergent transition(s): raise target_accept (e.g. 0.95), lengthen "
            "warmup, or use stronger priors / more data spread"
        )
    res.diagnostics.update(
        per_param=per,
        max_r_hat=worst_r,
        min_ess=min_ess,
        divergences=n_div,
        chains=C,
        draws=S,
    )
    if divergences_CxS is not None:
        res.diagnostics["divergences_per_draw"] = divergences_CxS
    res.problems = problems
    res.ok = not problems
    if problems:
        warnings.warn(
            f"fit of {res.form!r} FAILED diagnostics:\n  - " + "\n  - ".join(problems),
            RuntimeWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def _setup(
    data: Any,
    form: str | Form,
    priors: Mapping[str, Prior] | None,
    noise: str,
    df: float,
    target: str,
) -> tuple[Form, _Spec, dict[str, Prior], dict[str, np.ndarray], np.ndarray]:
    if noise not in NOISES:
        raise ValueError(f"noise: unknown {noise!r}; choose one of {list(NOISES)}")
    if not df > 0:
        raise ValueError(f"df: Student-t degrees of freedom must be > 0, got {df}")
    fm = get_form(form)
    if isinstance(form, Form) and _FORMS.get(fm.name) is not fm:
        register_form(fm, overwrite=True)
    x, y = prepare_data(data, fm, target=target)
    pri = _resolve_priors(fm, priors)
    spec = _Spec(fm.name, tuple(p.family for p in pri.values()), noise, float(df))
    return fm, spec, pri, x, y


def _init_points(
    spec: _Spec, pri: dict[str, Prior], centers: dict[str, float], m: int, seed: int
) -> np.ndarray:
    """Prior median plus m-1 prior draws, in the unconstrained (sampled) space."""
    from numpyro.distributions.transforms import biject_to

    fm = get_form(spec.form)
    key = jax.random.PRNGKey(seed)
    nat, unc = {}, {}
    for i, (n, p) in enumerate(pri.items()):
        d = _prior_dist(p.family, jnp.asarray(p.args))
        draws = d.sample(jax.random.fold_in(key, i), (m,))
        med = jnp.asarray(p.a) if p.family == "normal" else d.icdf(jnp.asarray(0.5))
        nat[n] = draws.at[0].set(med)
        unc[n] = biject_to(d.support).inv(nat[n])
    for n, (coef, inp) in fm.shear.items():
        unc[f"{n}_c"] = nat[n] - (1.0 if coef is None else nat[coef]) * centers[inp]
    return np.asarray(jnp.stack([unc[s] for s in fm.sites], -1))


def _arrays(
    x: dict[str, np.ndarray], y: np.ndarray, pri: dict[str, Prior]
) -> tuple[Any, Any, Any, dict[str, Any]]:

    lx = {k: jnp.log(jnp.asarray(v)) for k, v in x.items()}
    centers = {k: jnp.mean(v) for k, v in lx.items()}
    return lx, jnp.log(jnp.asarray(y)), jnp.asarray([p.args for p in pri.values()]), centers


def _laplace(
    spec: _Spec,
    pri: dict[str, Prior],
    x: dict[str, np.ndarray],
    y: np.ndarray,
    seed: int,
    starts: int = 24,
    iters: int = 60,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mode and covariance of the posterior in the unconstrained space (multi-start L-BFGS)."""

    lx, ly, pa, ce = _arrays(x, y, pri)
    u0 = jnp.asarray(_init_points(spec, pri, {k: float(v) for k, v in ce.items()}, starts, seed))
    u, v, H, _ = _map_program(spec, iters)(u0, lx, ly, pa, ce)
    H = np.asarray(H, np.float64)
    H = 0.5 * (H + H.T)
    w, V = np.linalg.eigh(H)
    if not np.all(np.isfinite(w)) or not np.isfinite(float(v)):
        raise RuntimeError("Laplace: no finite mode found; check the data and priors")
    floor = max(w.max(), 1.0) * 1e-10
    if (w <= floor).any():
        warnings.warn(
            "Laplace: Hessian not positive definite at the mode; regularised", stacklevel=3
        )
    cov = (V / np.maximum(w, floor)) @ V.T
    return np.asarray(u, np.float64), cov, float(v)


def fit(
    data: Any,
    form: str | Form = "chinchilla",
    *,
    method: str = "nuts",
    priors: Mapping[str, Prior] | None = None,
    noise: str = "student_t",
    df: float = 4.0,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 0,
    target_accept: float = 0.9,
    max_tree_depth: int = 10,
    chain_method: str = "auto",
    x64: bool = True,
    target: str = "loss",
    n_boot: int = 200,
    quiet: bool = False,
) -> FitResult:
    """Fit a registered form to a DataFrame/dict of inputs + loss.

    method: 'nuts' (default; Laplace-initialised dense-mass NUTS, `chains` vectorised chains, or
    parallel over devices), 'laplace' (Gaussian at the unconstrained mode, `draws` draws),
    'map' (mode only) or 'bootstrap' (Huber/L-BFGS baseline, Besiroglu 2024; see fit_huber).
    """

    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; choose one of {list(METHODS)}")
    if method == "bootstrap":
        return fit_huber(data, form, n_boot=n_boot, seed=seed, x64=x64, target=target)
    for nm, v in (("chains", chains), ("warmup", warmup), ("draws", draws)):
        if not (isinstance(v, int) and v > 0):
            raise ValueError(f"{nm}: must be a positive integer, got {v!r}")
    if chain_method not in ("auto", "vectorized", "parallel"):
        raise ValueError(f"chain_method: {chain_method!r} not in auto|vectorized|parallel")
    fm, spec, pri, x, y = _setup(data, form, priors, noise, df, target)
    t0 = time.perf_counter()
    with jax.enable_x64(x64):
        u_map, cov, pe = _laplace(spec, pri, x, y, seed)
        lx, ly, pa, ce = _arrays(x, y, pri)
        nat = functools.partial(_constrained_np, spec, pa, ce)
        if method in ("map", "laplace"):
            rng = np.random.default_rng(seed)
            n = 1 if method == "map" else draws
            u = u_map[None] if method == "map" else rng.multivariate_normal(u_map, cov, n)
            samples = nat(u[None])
            res = _finish(fm, method, samples, x, y, pri, noise, df, t0)
            res.point = {k: float(v.reshape(-1)[0]) for k, v in nat(u_map[None, None]).items()}
            res.diagnostics["laplace_cov"] = cov
            if method == "laplace":
                res.log_lik = _log_lik(spec, res, x, y)
            return res
        ndev = jax.local_device_count()
        parallel = chain_method == "parallel" or (
            chain_method == "auto" and ndev > 1 and chains % ndev == 0
        )
        if parallel and chains % ndev:
            raise ValueError(f"chain_method='parallel' needs chains divisible by {ndev} devices")
        rng = np.random.default_rng(seed)
        u0 = rng.multivariate_normal(u_map, cov, chains)
        keys = jax.random.split(jax.random.PRNGKey(seed), chains)

        prog = _nuts_program(spec, warmup, draws, float(target_accept), max_tree_depth, parallel)
        if parallel:
            keys = keys.reshape(ndev, chains // ndev, -1)
            u0 = u0.reshape(ndev, chains // ndev, -1)
        (z, div, nsteps, acc), step = prog(keys, jnp.asarray(u0), jnp.asarray(cov), lx, ly, pa, ce)
        z = np.asarray(z).reshape(chains, draws, -1)
        div = np.asarray(div).reshape(chains, draws)
        samples = nat(z)
        res = _finish(fm, "nuts", samples, x, y, pri, noise, df, t0)
        res.point = {k: float(v.reshape(-1)[0]) for k, v in nat(u_map[None, None]).items()}
        res.diagnostics.update(
            mean_tree_steps=float(np.mean(np.asarray(nsteps))),
            mean_accept=float(np.mean(np.asarray(acc))),
            step_size=np.asarray(step).reshape(-1).tolist(),
        )
        res.log_lik = _log_lik(spec, res, x, y)
    _diagnose(res, div)
    res.seconds = time.perf_counter() - t0
    if not quiet and not res.ok:
        print(f"fit {fm.name}: DIAGNOSTICS FAILED — " + "; ".join(res.problems))
    return res


def _constrained_np(spec: _Spec, pa: Any, ce: Any, u_CxSxK: np.ndarray) -> dict[str, np.ndarray]:

    p = _constrain_with_args(spec, jnp.asarray(u_CxSxK), pa, ce)
    return _with_natural({k: np.asarray(v, np.float64) for k, v in p.items()})


def _finish(
    fm: Form,
    method: str,
    samples: dict[str, np.ndarray],
    x: dict[str, np.ndarray],
    y: np.ndarray,
    pri: dict[str, Prior],
    noise: str,
    df: float,
    t0: float,
) -> FitResult:
    return FitResult(
        form=fm.name,
        method=method,
        samples=samples,
        inputs=x,
        loss=y,
        priors={k: str(v) for k, v in pri.items()},
        noise=noise,
        df=df,
        seconds=time.perf_counter() - t0,
    )


def _log_lik(spec: _Spec, res: FitResult, x: dict[str, np.ndarray], y: np.ndarray) -> np.ndarray:
    """Pointwise log-likelihood of log loss per draw, (chains, draws, n)."""

    mu = _mu_np(res, x)
    sig = np.asarray(res.samples["sigma"])[..., None]
    r = np.log(y) - mu
    if res.noise == "student_t":
        return stats.t.logpdf(r, res.df, scale=sig)
    return stats.norm.logpdf(r, scale=sig)


def _mu_np(res: FitResult, x: Mapping[str, Any]) -> np.ndarray:
    """Form mean of log loss per draw at inputs x: (chains, draws, n)."""

    fm = get_form(res.form)
    with jax.enable_x64(True):
        lx = {
            k: jnp.log(jnp.asarray(np.asarray(x[k], np.float64)))[None, None, :] for k in fm.inputs
        }
        p = {k: jnp.asarray(res.samples[k])[..., None] for k in fm.params}
        mu = fm.log_loss(lx, p)
        n = np.asarray(next(iter(x.values()))).size
        return np.asarray(jnp.broadcast_to(mu, (*res.samples[fm.params[0]].shape, n)))


# --------------------------------------------------------------------------------------------
# Huber / L-BFGS / bootstrap baseline (Hoffmann 2022 App. D.2; Besiroglu 2024 sec. 2)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _huber_program(form: str, delta: float, iters: int) -> Callable[..., Any]:

    fm = get_form(form)

    def obj(theta_K: Any, lx: Any, log_y: Any, w: Any) -> Any:
        p = {n: theta_K[i] for i, n in enumerate(fm.params)}
        r = fm.log_loss(lx, p) - log_y
        return jnp.sum(w * optax.losses.huber_loss(r, delta=delta)) / delta

    def solve(th0_MxK: Any, lx: Any, log_y: Any, w: Any) -> Any:
        f = lambda th: obj(th, lx, log_y, w)
        return jax.vmap(lambda t: _lbfgs(f, t, iters))(th0_MxK)

    # vmap over bootstrap weight vectors and their own start sets
    screen = jax.vmap(obj, in_axes=(0, None, None, None))
    return jax.jit(jax.vmap(solve, in_axes=(0, None, None, 0))), jax.jit(screen)


def _grid(fm: Form) -> np.ndarray:
    if fm.grid is not None:
        axes = [np.asarray(fm.grid[n], np.float64) for n in fm.params]
    else:
        axes = []
        for n in fm.params:
            p = fm.priors[n]
            q = np.array([0.1, 0.5, 0.9])
            a, b = p.args
            dist = {
                "normal": st.norm(a, b),
                "lognormal": st.lognorm(b, scale=math.exp(a)),
                "halfnormal": st.halfnorm(scale=a),
                "gamma": st.gamma(a, scale=1 / b),
                "exponential": st.expon(scale=1 / a),
                "uniform": st.uniform(a, b - a),
            }[p.family]
            axes.append(dist.ppf(q))
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], -1)


def fit_huber(
    data: Any,
    form: str | Form = "chinchilla",
    *,
    delta: float = 1e-3,
    n_boot: int = 200,
    seed: int = 0,
    iters: int = 300,
    n_starts: int = 64,
    starts_per_boot: int = 2,
    x64: bool = True,
    target: str = "loss",
) -> FitResult:
    """Published point-estimate method: Huber(delta) loss on log loss, L-BFGS from a grid.

    The objective is evaluated on every grid point (for Chinchilla the 4500-point grid of
    Besiroglu et al. 2024) and L-BFGS runs from the `n_starts` best of them (running it from all
    4500 costs minutes on a CPU and, on the Chinchilla data, finds the same optimum); each of
    `n_boot` bootstrap resamples (rows drawn with replacement, Besiroglu 2024 sec. 3) restarts
    from the `starts_per_boot` best distinct full-data optima. Samples are the bootstrap
    estimates, shape (1, n_boot); `point` is the full-data fit.
    """

    fm, _, pri, x, y = _setup(data, form, None, "gaussian", 1.0, target)
    t0 = time.perf_counter()
    with jax.enable_x64(x64):
        lx = {k: jnp.log(jnp.asarray(v)) for k, v in x.items()}
        ly = jnp.log(jnp.asarray(y))
        prog, screen = _huber_program(fm.name, float(delta), iters)
        g = _grid(fm)
        v0 = np.asarray(screen(jnp.asarray(g), lx, ly, jnp.ones(y.size)))
        g0 = g[np.argsort(np.where(np.isfinite(v0), v0, np.inf))[:n_starts]]
        th, v = prog(jnp.asarray(g0)[None], lx, ly, jnp.ones((1, y.size)))
        th, v = np.asarray(th[0]), np.asarray(v[0])
        order = np.argsort(np.where(np.isfinite(v), v, np.inf))
        best = th[order[0]]
        # distinct good optima as bootstrap starts
        starts = [best]
        for i in order[1:]:
            if len(starts) >= starts_per_boot or not np.isfinite(v[i]):
                break
            if all(np.abs(th[i] - s).max() > 1e-2 for s in starts):
                starts.append(th[i])
        while len(starts) < starts_per_boot:
            starts.append(best)
        rng = np.random.default_rng(seed)
        w = np.stack(
            [np.bincount(rng.integers(0, y.size, y.size), minlength=y.size) for _ in range(n_boot)]
        ).astype(np.float64)
        s0 = jnp.broadcast_to(jnp.asarray(np.stack(starts)), (n_boot, starts_per_boot, best.size))
        thb, vb = prog(s0, lx, ly, jnp.asarray(w))
        thb, vb = np.asarray(thb), np.asarray(vb)
        thb = thb[np.arange(n_boot), np.argmin(np.where(np.isfinite(vb), vb, np.inf), 1)]
    samples = _with_natural({n: thb[None, :, i] for i, n in enumerate(fm.params)})
    res = _finish(fm, "bootstrap", samples, x, y, pri, "huber", float(delta), t0)
    res.point = _with_natural({n: np.float64(best[i]) for i, n in enumerate(fm.params)})
    res.point = {k: float(v) for k, v in res.point.items()}
    res.diagnostics = {
        "n_boot": n_boot,
        "grid_points": int(g.shape[0]),
        "objective": float(v[order[0]]),
    }
    return res


# --------------------------------------------------------------------------------------------
# Derived quantities, prediction, comparison
# --------------------------------------------------------------------------------------------


def _q(v: np.ndarray, qs: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> dict[str, float]:
    return {f"q{round(q * 100)}": float(np.quantile(v, q)) for q in qs} | {
        "mean": float(np.mean(v))
    }


def chinchilla_allocation(
    alpha: Any, beta: Any, A: Any, B: Any, C: float | Sequence[float]
) -> dict[str, np.ndarray]:
    """Compute-optimal allocation (Hoffmann 2022 App. D) for given parameters (arrays broadcast).

    a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A/(beta B))^(1/(alpha+beta)),
    N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, tokens_per_param = D_opt / N_opt.
    """
    al, be = np.atleast_1d(np.asarray(alpha, np.float64)), np.atleast_1d(np.asarray(beta, float))
    la, lb = np.log(np.atleast_1d(np.asarray(A, np.float64))), np.log(np.atleast_1d(B))
    a, b = be / (al + be), al / (al + be)
    log_G = (np.log(al) + la - np.log(be) - lb) / (al + be)
    lc = np.log(np.atleast_1d(np.asarray(C, np.float64)) / 6.0)
    log_N = log_G[:, None] + a[:, None] * lc
    log_D = -log_G[:, None] + b[:, None] * lc
    sq = (lambda v: v[:, 0]) if np.ndim(C) == 0 else (lambda v: v)
    return {
        "a": a,
        "b": b,
        "G": np.exp(log_G),
        "N_opt": sq(np.exp(log_N)),
        "D_opt": sq(np.exp(log_D)),
        "tokens_per_param": sq(np.exp(log_D - log_N)),
    }


def compute_optimal(res: FitResult, C: float | Sequence[float]) -> dict[str, np.ndarray]:
    """Per-draw Chinchilla allocation of a fit at compute C (see chinchilla_allocation)."""
    need = {"alpha", "beta", "log_A", "log_B"}
    if not need <= set(res.samples) or set(get_form(res.form).inputs) != {"N", "D"}:
        raise ValueError(
            f"compute_optimal needs a Chinchilla-type fit (params {sorted(need)} over N, D); "
            f"form {res.form!r} has {sorted(res.samples)}"
        )
    return chinchilla_allocation(
        res.flat("alpha"), res.flat("beta"), np.exp(res.flat("log_A")), np.exp(res.flat("log_B")), C
    )


def compare_published(res: FitResult, C: float = 5.76e23) -> Any:
    """Posterior median [5%, 95%] beside Hoffmann 2022 and Besiroglu 2024 Chinchilla fits."""

    pubs = {
        "Hoffmann 2022": dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
        "Besiroglu 2024": dict(E=1.817, A=482.0, B=2085.4, alpha=0.348, beta=0.366),
    }
    opt = compute_optimal(res, C)
    rows = {}
    for k in ("E", "A", "B", "alpha", "beta", "a", "tokens_per_param"):
        v = opt[k] if k in opt else res.flat(k)
        q5, q50, q95 = np.quantile(v, [0.05, 0.5, 0.95])
        row = {f"{res.method} median": q50, "5%": q5, "95%": q95}
        for name, p in pubs.items():
            al = chinchilla_allocation(p["alpha"], p["beta"], p["A"], p["B"], C)
            row[name] = p[k] if k in p else float(al[k][0])
        rows[k] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def optimal_summary(res: FitResult, C: float) -> dict[str, dict[str, float]]:
    """Quantiles (5/25/50/75/95%) of a, b, G, N_opt, D_opt, D/N at compute C."""
    return {k: _q(v) for k, v in compute_optimal(res, C).items()}


def predict(
    res: FitResult, inputs: Mapping[str, Any], *, include_noise: bool = False, seed: int = 0
) -> Any:
    """Posterior predictive loss at new inputs: median, mean, 50% and 90% bands (DataFrame)."""

    fm = get_form(res.form)
    missing = [k for k in fm.inputs if k not in inputs]
    if missing:
        raise ValueError(f"predict: inputs missing {missing} for form {fm.name!r}")
    x = {k: np.atleast_1d(np.asarray(inputs[k], np.float64)) for k in fm.inputs}
    n = max(v.size for v in x.values())
    x = {k: np.broadcast_to(v, (n,)) for k, v in x.items()}
    if any((v <= 0).any() or not np.isfinite(v).all() for v in x.values()):
        raise ValueError("predict: inputs must be positive and finite")
    mu = _mu_np(res, x).reshape(-1, n)
    if include_noise:
        if "sigma" not in res.samples:
            raise ValueError("predict: include_noise needs a Bayesian fit with a sigma parameter")
        rng = np.random.default_rng(seed)
        sig = res.flat("sigma")[:, None]
        eps = (
            rng.standard_t(res.df, mu.shape)
            if res.noise == "student_t"
            else rng.standard_normal(mu.shape)
        )
        mu = mu + sig * eps
    L = np.exp(mu)
    qs = np.quantile(L, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    out = pd.DataFrame({k: v for k, v in x.items()})
    for q, row in zip(("q5", "q25", "q50", "q75", "q95"), qs):
        out[q] = row
    out["mean"] = L.mean(0)
    return out


def compare(results: Mapping[str, FitResult], ic: str = "loo") -> Any:
    """Rank fits of different forms on the same data by PSIS-LOO (or WAIC) via arviz."""
    import arviz as az

    if len({r.loss.size for r in results.values()}) != 1:
        raise ValueError("compare: all fits must be on the same data points")
    for k, r in results.items():
        if r.log_lik is None:
            raise ValueError(f"compare: fit {k!r} ({r.method}) has no pointwise log-likelihood")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return az.compare({k: r.to_inference_data() for k, r in results.items()}, ic=ic)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def save_result(
    res: FitResult, out_dir: str | Path, *, target_compute: float | None = None, plots: bool = True
) -> dict[str, Path]:
    """Write summary (JSON + CSV), samples (npz), posterior (netCDF) and plots to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    summ = res.summary()
    info: dict[str, Any] = {
        "form": res.form,
        "method": res.method,
        "reference": get_form(res.form).reference,
        "n_points": int(res.loss.size),
        "noise": res.noise,
        "df": res.df,
        "priors": res.priors,
        "ok": res.ok,
        "problems": res.problems,
        "seconds": res.seconds,
        "point": res.point,
        "diagnostics": {
            k: v
            for k, v in res.diagnostics.items()
            if k
            in (
                "max_r_hat",
                "min_ess",
                "divergences",
                "chains",
                "draws",
                "mean_tree_steps",
                "mean_accept",
                "n_boot",
                "grid_points",
            )
        },
        "summary": json.loads(summ.to_json(orient="index")),
    }
    if target_compute is not None and {"alpha", "beta", "log_A", "log_B"} <= set(res.samples):
        info["optimal"] = {"C": target_compute, **optimal_summary(res, target_compute)}
    paths["json"] = out / "summary.json"
    paths["json"].write_text(json.dumps(info, indent=2, default=float))
    paths["csv"] = out / "summary.csv"
    summ.to_csv(paths["csv"])
    paths["npz"] = out / "samples.npz"
    np.savez(
        paths["npz"],
        **res.samples,
        **{f"input_{k}": v for k, v in res.inputs.items()},
        loss=res.loss,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paths["netcdf"] = out / "posterior.nc"
            res.to_inference_data().to_netcdf(str(paths["netcdf"]))
    except Exception as e:  # netCDF backend missing: keep the other outputs
        paths.pop("netcdf")
        warnings.warn(f"netCDF not written ({e}); install netCDF4 or h5netcdf", stacklevel=2)
    if plots:
        paths.update(plot_result(res, out, target_compute=target_compute))
    return paths


def _save_fig(fig: Any, stem: Path) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    out = {}
    for ext in ("png", "svg"):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=120, bbox_inches="tight")
        out[f"{stem.name}_{ext}"] = p
    plt.close(fig)
    return out


def plot_result(
    res: FitResult, out_dir: str | Path, *, target_compute: float | None = None
) -> dict[str, Path]:
    """Data + extrapolated posterior-predictive bands, exponent pairs, N_opt(C) band."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "svg", "pdf"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    fm = get_form(res.form)
    paths: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(6, 4.2))
    x = res.inputs
    if set(fm.inputs) == {"N", "D"}:
        C = 6 * x["N"] * x["D"]
        edges = np.unique(np.round(np.log10(C), 1))
        cmax = C.max()
        levels = list(10 ** edges[:: max(1, len(edges) // 6)]) + [10 * cmax, 100 * cmax]
        sc = ax.scatter(x["N"], res.loss, c=np.log10(C), s=8, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="log10 C = 6ND")
        for c in levels:
            Ng = np.geomspace(x["N"].min() / 3, x["N"].max() * 30, 60)
            pr = predict(res, {"N": Ng, "D": c / (6 * Ng)})
            ext = c > cmax
            ax.plot(Ng, pr["q50"], "--" if ext else "-", lw=1, color="k" if ext else "0.4")
            ax.fill_between(Ng, pr["q5"], pr["q95"], alpha=0.25 if ext else 0.15, lw=0)
            ax.fill_between(Ng, pr["q25"], pr["q75"], alpha=0.25 if ext else 0.15, lw=0)
        ax.set_xlabel("N (parameters)")
        ax.set_ylim(min(res.loss.min() * 0.85, ax.get_ylim()[0]), np.quantile(res.loss, 0.98) * 1.1)
    else:
        xn = fm.inputs[-1]
        others = [k for k in fm.inputs if k != xn]
        groups = [np.ones_like(res.loss, bool)]
        if others:
            o = x[others[0]]
            uo = np.unique(o)
            sel = uo if uo.size <= 6 else np.quantile(uo, np.linspace(0, 1, 6), method="nearest")
            groups = [o == u for u in np.unique(sel)]
        ax.scatter(x[xn], res.loss, s=8, color="k")
        xg = np.geomspace(x[xn].min(), x[xn].max() * 100, 80)
        for g in groups:
            inp = {xn: xg, **{k: np.median(x[k][g]) for k in others}}
            pr = predict(res, inp)
            ax.plot(xg, pr["q50"], lw=1)
            ax.fill_between(xg, pr["q5"], pr["q95"], alpha=0.15, lw=0)
            ax.fill_between(xg, pr["q25"], pr["q75"], alpha=0.25, lw=0)
        ax.axvline(x[xn].max(), color="0.6", lw=0.8, ls=":")
        ax.set_xlabel(xn)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_title(f"{fm.name}: {fm.description} ({res.method}; bands 50/90%)", fontsize=9)
    paths.update(_save_fig(fig, out_dir / "fit_data"))

    expo = [k for k in fm.params if not k.startswith("log_")]
    if len(expo) >= 2:
        k = len(expo)
        fig, axs = plt.subplots(k - 1, k - 1, figsize=(2.6 * (k - 1), 2.6 * (k - 1)), squeeze=False)
        for i in range(1, k):
            for j in range(k - 1):
                a = axs[i - 1, j]
                if j >= i:
                    a.axis("off")
                    continue
                a.scatter(res.flat(expo[j]), res.flat(expo[i]), s=1, alpha=0.2)
                a.set_xlabel(expo[j])
                a.set_ylabel(expo[i])
        paths.update(_save_fig(fig, out_dir / "exponents_pair"))

    if {"alpha", "beta", "log_A", "log_B"} <= set(res.samples) and set(fm.inputs) == {"N", "D"}:
        C_obs = 6 * x["N"] * x["D"]
        Cg = np.geomspace(C_obs.min(), max(C_obs.max() * 100, target_compute or 0), 50)
        No = compute_optimal(res, Cg)["N_opt"]
        fig, ax = plt.subplots(figsize=(5, 3.8))
        q = np.quantile(No, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
        ax.plot(Cg, q[2], color="C0")
        ax.fill_between(Cg, q[0], q[4], alpha=0.2, lw=0, color="C0", label="90%")
        ax.fill_between(Cg, q[1], q[3], alpha=0.35, lw=0, color="C0", label="50%")
        if target_compute:
            ax.axvline(target_compute, color="0.5", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("C (FLOP)")
        ax.set_ylabel("N_opt")
        ax.legend()
        ax.set_title("compute-optimal N (Hoffmann 2022 App. D)", fontsize=9)
        paths.update(_save_fig(fig, out_dir / "n_opt"))
    return paths


# --------------------------------------------------------------------------------------------
# CLI pieces (wired into jaxscale.cli by the lead)
# --------------------------------------------------------------------------------------------


def add_fit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `fit` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "fit", help="fit a scaling law (NUTS / Laplace / Huber bootstrap) to runs or a CSV"
    )
    p.add_argument("source", help="runs directory or CSV (columns N/D/C/S/loss, or Epoch's)")
    p.add_argument(
        "--form",
        default="chinchilla",
        help="registered form (chinchilla, kaplan_nd, kaplan_ns, power_C/N/D/S, ...)",
    )
    p.add_argument("--flops-convention", default=None, help="which flops_<convention> column is C")
    p.add_argument(
        "--target-compute",
        type=float,
        default=None,
        help="report N_opt, D_opt, tokens/param at this C (FLOP)",
    )
    p.add_argument("--method", choices=METHODS, default="nuts")
    p.add_argument("--noise", choices=NOISES, default="student_t")
    p.add_argument("--out", default=None, help="output directory (default: print only)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument(
        "--n-boot", type=int, default=200, help="bootstrap resamples (--method bootstrap)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--drop-highest",
        type=int,
        default=0,
        help="drop the k highest-loss points first (Besiroglu 2024 drops 5)",
    )
    p.add_argument("--no-plots", action="store_true")
    return p


def run_fit_cli(args: argparse.Namespace) -> int:
    """Run `jaxscale fit`; returns a process exit code (1 if diagnostics failed)."""

    df = load_fit_data(args.source, flops_convention=args.flops_convention)
    if args.drop_highest:
        df = df.sort_values("loss").iloc[: max(0, len(df) - args.drop_highest)]
    res = fit(
        df,
        args.form,
        method=args.method,
        noise=args.noise,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
        n_boot=args.n_boot,
    )
    with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
        print(f"{res.form} [{res.method}] on {res.loss.size} points in {res.seconds:.1f} s")
        print(res.summary())
    if args.target_compute is not None and res.form in ("chinchilla",):
        for k, v in optimal_summary(res, args.target_compute).items():
            print(f"{k:>16} median {v['q50']:.4g}  90% [{v['q5']:.4g}, {v['q95']:.4g}]")
    if args.out:
        paths = save_result(
            res, args.out, target_compute=args.target_compute, plots=not args.no_plots
        )
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    if not res.ok:
        print("DIAGNOSTICS FAILED: " + "; ".join(res.problems))
        return 1
    return 0


__all__ = [
    "Prior",
    "Form",
    "FitResult",
    "register_form",
    "get_form",
    "list_forms",
    "power_law_form",
    "numpyro_model",
    "prepare_data",
    "load_fit_data",
    "fit",
    "fit_huber",
    "compute_optimal",
    "optimal_summary",
    "chinchilla_allocation",
    "compare_published",
    "predict",
    "compare",
    "save_result",
    "plot_result",
    "add_fit_parser",
    "run_fit_cli",
    "CHINCHILLA",
    "KAPLAN_ND",
    "KAPLAN_NS",
    "NOISE_PRIOR",
]
