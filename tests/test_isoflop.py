"""Approach 2 (Hoffmann et al. 2022 §3.2): windowed vertices, bracketing, honest intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxscale.analysis import isoflop
from jaxscale.analysis.fit import varpro

# Hoffmann et al. 2022 approach-3 fit; N_opt = G (C/6)^a with a = β/(α+β) (their eq. 4).
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
A_TRUE = BETA / (ALPHA + BETA)
BUDGETS = np.logspace(18, 22, 5)


def _surface(offsets, *, n=15, half_width=1.5, noise=0.0, rng=None):
    """isoFLOP grids of n sizes, centred `offsets[i]` dex from each budget's true N_opt."""
    cols = [[], [], [], []]
    for c, off in zip(BUDGETS, offsets):
        ctr = math.log10(G * (c / 6) ** A_TRUE) + off
        N = np.logspace(ctr - half_width, ctr + half_width, n)
        D = c / (6 * N)
        L = E + A * N**-ALPHA + B * D**-BETA
        if noise:
            L = L + noise * rng.standard_normal(n)
        for col, v in zip(cols, ([c] * n, np.log10(N), L, np.log10(D))):
            col.extend(v)
    return cols


def test_window_removes_drifting_grid_bias_that_a_global_parabola_keeps():
    cols = _surface(0.6 - 0.3 * np.arange(5))
    windowed = isoflop.exponent(isoflop.fit_profiles(*cols, noise_sd=1e-3))
    everything = isoflop.exponent(isoflop.fit_profiles(*cols, window=15, noise_sd=1e-3))
    assert abs(windowed.value - A_TRUE) < 1e-3
    assert windowed.lo <= A_TRUE <= windowed.hi
    assert abs(everything.value - A_TRUE) > 3e-3  # the known Approach 2 bias
    assert not everything.lo <= A_TRUE <= everything.hi


def test_data_exponent_b_is_one_minus_a_on_a_chinchilla_surface():
    cols = _surface(np.zeros(5), n=9, half_width=1.0)
    ps = isoflop.fit_profiles(*cols, noise_sd=1e-3)
    a, b = isoflop.exponent(ps, of="N"), isoflop.exponent(ps, of="D")
    assert a.value + b.value == pytest.approx(1.0, abs=1e-6)  # N·D ∝ C along the optimum


def test_interval_covers_the_planted_exponent_at_its_stated_rate():
    rng = np.random.default_rng(1)
    reps, hits = 120, 0
    for r in range(reps):
        cols = _surface(rng.uniform(-0.3, 0.3, 5), n=9, half_width=1.0, noise=0.01, rng=rng)
        e = isoflop.exponent(isoflop.fit_profiles(*cols, seed=r, n_boot=400))
        hits += e.lo <= A_TRUE <= e.hi
    # 90% intervals: 120 draws put 85% below the binomial 1% tail of a true 90% rate.
    assert hits / reps >= 0.83


def test_best_run_at_an_edge_is_not_bracketed_and_names_the_side():
    cols = _surface([1.2, 0.0, 0.0, 0.0, -1.2], n=7, half_width=0.9)
    ps = isoflop.fit_profiles(*cols, noise_sd=1e-3)
    assert [p.extend for p in ps] == ["smaller", None, None, None, "larger"]
    assert isoflop.exponent(ps).n_vertices == 3


def test_two_vertices_are_refused_unless_forced():
    cols = _surface([1.2, 0.0, 0.0, 1.2, 1.2], n=7, half_width=0.9)
    ps = isoflop.fit_profiles(*cols, noise_sd=1e-3)
    with pytest.raises(isoflop.ApproachTwoError, match="needs 3.*train smaller sizes"):
        isoflop.exponent(ps)
    with pytest.warns(UserWarning, match="forced"):
        assert isoflop.exponent(ps, force=True).n_vertices == 2


def test_no_residual_dof_means_no_interval_not_a_tight_one():
    cols = _surface(np.zeros(5), n=3, half_width=0.5)
    ps = isoflop.fit_profiles(*cols)
    assert all(math.isnan(v) for p in ps for v in p.interval())
    e = isoflop.exponent(ps)
    assert math.isfinite(e.value) and math.isnan(e.lo) and math.isnan(e.hi)


def test_parabola_vertex_interval_covers_at_its_stated_rate():
    rng = np.random.default_rng(1)
    x = np.linspace(4.0, 6.0, 7)  # log10 N
    truth, hits = 5.3, 0
    for _ in range(300):
        fit = isoflop.fit_parabola(x, 3.0 + 0.4 * (x - truth) ** 2 + rng.normal(0, 0.01, x.size))
        lo, hi = fit.vertex_interval()
        hits += lo <= truth <= hi
    assert 0.85 <= hits / 300 <= 0.95  # 90% Student-t interval on 4 residual dof


def _planted(cols):
    """The varpro fit of a planted surface's own points (exact: no noise)."""
    budget, logN, loss, logD = (np.asarray(c) for c in cols)
    return varpro.fit_varpro(10**logN, 10**logD, loss)


def test_bias_check_predicts_the_global_parabolas_bias_on_a_drifting_grid():
    cols = _surface(0.6 - 0.3 * np.arange(5))
    surface = _planted(cols)
    wide = isoflop.fit_profiles(*cols, window=15, noise_sd=1e-3)
    observed = isoflop.exponent(wide)
    check = isoflop.expected_bias(wide, surface, observed, window=15)
    # The data are the surface, so Approach 2 on the surface is the observed estimate exactly.
    assert check.simulated_a == pytest.approx(observed.value, abs=1e-6)
    assert check.bias == pytest.approx(observed.value - A_TRUE, abs=1e-6)
    assert abs(check.convention_tilt) < 1e-4  # C = 6ND exactly: all of it is the method's
    assert check.significant and "WARNING" in check.describe()
    narrow = isoflop.fit_profiles(*cols, noise_sd=1e-3)
    small = isoflop.expected_bias(narrow, surface, isoflop.exponent(narrow))
    assert abs(small.bias) < 1e-3 and abs(small.bias) < abs(check.bias) / 5


def _exp(value, lo, hi, n=4):
    return isoflop.Exponent("N", value, lo, hi, 0.9, n, np.empty(0))


def _bias(b, half_width):
    return isoflop.BiasCheck(0.45, 0.45, 0.45 + b, half_width, 4)


@pytest.mark.parametrize(
    ("a2", "a3_ok", "bias", "agree", "trust"),
    [
        (_exp(0.50, 0.45, 0.55), True, None, True, "both"),
        (_exp(0.50, 0.45, 0.55), True, _bias(0.08, 0.05), True, "Approach 3"),
        (_exp(0.60, 0.57, 0.63), True, _bias(0.12, 0.03), False, "Approach 3"),
        (_exp(0.60, 0.57, 0.63), False, None, False, "Approach 2"),
        (_exp(0.60, 0.57, 0.63), True, _bias(0.0, 0.03), False, "neither"),
        (None, True, None, None, "Approach 3"),
    ],
)
def test_reconcile_says_which_approach_to_trust_and_why(a2, a3_ok, bias, agree, trust):
    r = isoflop.reconcile(
        a2,
        (0.40, 0.47, 0.54),
        a2_refusal=None if a2 else "2 bracketed isoFLOP vertices; an exponent needs 3",
        a3_ok=a3_ok,
        a3_problems=() if a3_ok else ("r_hat 1.2",),
        varpro_a=0.46,
        bias=bias,
    )
    assert (r.agree, r.trust) == (agree, trust)
    text = r.describe()
    assert "nan" not in text and "0.470 [0.400, 0.540] (90%)" in text and "0.460" in text
    if a2 is None:
        assert "needs 3" in text
