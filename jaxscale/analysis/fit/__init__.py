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
    print(res.describe())

``lx`` holds the *log* of every input; parameters named ``log_X`` are reported also as ``X``.
Observations enter through residuals on log loss (Student-t by default, Gaussian optional) with a
fitted scale ``sigma``.

Predictions are posterior predictive (noise and a model-discrepancy term that grows with the
decades beyond the data included); every interval is a central 90% interval. :func:`backtest`
fits on part of the data and scores the held-out rest against those bands.

Layout: :mod:`.forms` (priors, forms, registry), :mod:`.inference` (numpyro model, data, solvers,
diagnostics, prior sensitivity), :mod:`.results` (FitResult, prediction, compute-optimal
allocation, comparison), :mod:`.extrapolation` (distance beyond the data, model discrepancy),
:mod:`.backtests` (hold-outs and their scores), :mod:`.varpro` (least-squares point fit).
"""

from jaxscale.analysis.fit.backtests import HOLDOUTS, Backtest, backtest, holdout_mask
from jaxscale.analysis.fit.extrapolation import DEFAULT_DISCREPANCY, Discrepancy, distance
from jaxscale.analysis.fit.forms import (
    CHINCHILLA,
    INPUT_NAMES,
    KAPLAN_ND,
    KAPLAN_NS,
    NOISE_PRIOR,
    Form,
    Prior,
    get_form,
    list_forms,
    power_law_form,
    register_form,
)
from jaxscale.analysis.fit.inference import (
    METHODS,
    NOISES,
    PriorDominatedWarning,
    ReplicatesMergedWarning,
    estimate_discrepancy,
    fit,
    fit_huber,
    load_fit_data,
    numpyro_model,
    prepare,
    prepare_data,
    select_rows,
    setup,
)
from jaxscale.analysis.fit.results import (
    INTERVAL,
    FitResult,
    chinchilla_allocation,
    compare,
    compare_published,
    compute_optimal,
    extrapolation_line,
    extrapolation_summary,
    optimal_summary,
    predict,
)

__all__ = [
    "CHINCHILLA",
    "DEFAULT_DISCREPANCY",
    "HOLDOUTS",
    "INTERVAL",
    "Backtest",
    "Discrepancy",
    "PriorDominatedWarning",
    "ReplicatesMergedWarning",
    "backtest",
    "distance",
    "estimate_discrepancy",
    "extrapolation_line",
    "extrapolation_summary",
    "holdout_mask",
    "prepare",
    "select_rows",
    "setup",
    "INPUT_NAMES",
    "KAPLAN_ND",
    "KAPLAN_NS",
    "METHODS",
    "NOISES",
    "NOISE_PRIOR",
    "FitResult",
    "Form",
    "Prior",
    "chinchilla_allocation",
    "compare",
    "compare_published",
    "compute_optimal",
    "fit",
    "fit_huber",
    "get_form",
    "list_forms",
    "load_fit_data",
    "numpyro_model",
    "optimal_summary",
    "power_law_form",
    "predict",
    "prepare_data",
    "register_form",
]
