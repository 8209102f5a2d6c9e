"""Scaling-law forms: priors, the form registry, and the Chinchilla / Kaplan / power-law forms.

A form is a function of named (positive) inputs and named parameters returning the log of the
predicted loss, plus a weakly-informative prior per parameter; ``lx`` holds the *log* of every
input and parameters named ``log_X`` are reported also as ``X``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
import numpy as np
import scipy.stats as st

# Quantities a form may take as inputs; CSV/run tables are mapped onto these names.
INPUT_NAMES = ("N", "D", "C", "S")

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


def prior_distribution(family: str, ab: Any) -> Any:
    """numpyro distribution for a prior family with (possibly traced) parameters ab = (a, b)."""
    import numpyro.distributions as dist  # lazy: numpyro is slow to import

    a, b = ab[0], ab[1]
    return {
        "normal": lambda: dist.Normal(a, b),
        "lognormal": lambda: dist.LogNormal(a, b),
        "halfnormal": lambda: dist.HalfNormal(a),
        "gamma": lambda: dist.Gamma(a, b),
        "exponential": lambda: dist.Exponential(a),
        "uniform": lambda: dist.Uniform(a, b),
    }[family]()


def prior_scipy(prior: Prior) -> Any:
    """The frozen scipy.stats distribution of a prior (numpy-side densities and quantiles)."""
    a, b = prior.args
    return {
        "normal": lambda: st.norm(a, b),
        "lognormal": lambda: st.lognorm(b, scale=math.exp(a)),
        "halfnormal": lambda: st.halfnorm(scale=a),
        "gamma": lambda: st.gamma(a, scale=1 / b),
        "exponential": lambda: st.expon(scale=1 / a),
        "uniform": lambda: st.uniform(a, b - a),
    }[prior.family]()


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


def use_form(form: str | Form) -> Form:
    """get_form, also registering a Form object (compiled programs look forms up by name)."""
    fm = get_form(form)
    if isinstance(form, Form) and _FORMS.get(fm.name) is not fm:
        register_form(fm, overwrite=True)
    return fm


def resolve_priors(form: Form, priors: Mapping[str, Prior] | None) -> dict[str, Prior]:
    """The form's priors plus the noise prior on sigma, with user overrides validated."""
    out = {**form.priors, "sigma": NOISE_PRIOR}
    for k, v in (priors or {}).items():
        if k not in out:
            raise ValueError(f"priors: {k!r} is not a parameter of {form.name!r}; have {list(out)}")
        if not isinstance(v, Prior):
            raise ValueError(f"priors[{k!r}]: expected fit.Prior, got {type(v).__name__}")
        out[k] = v
    return out
