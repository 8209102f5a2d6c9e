"""Variable projection recovers a Chinchilla surface to machine precision (Hoffmann 2022 eq. 2)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxscale.analysis.fit import varpro

TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _grid():
    N, D = [], []
    for c in np.logspace(18, 22, 6):
        n = np.logspace(np.log10(np.sqrt(c / 6)) - 1.2, np.log10(np.sqrt(c / 6)) + 1.2, 9)
        N += list(n)
        D += list(c / (6 * n))
    return np.array(N), np.array(D)


def _loss(N, D, p=TRUTH):
    return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]


def test_noise_free_chinchilla_surface_recovered_to_1e_6():
    N, D = _grid()
    fit = varpro.fit_varpro(N, D, _loss(N, D))
    for k, v in TRUTH.items():
        assert getattr(fit, k) == pytest.approx(v, rel=1e-6), k
    a, b = fit.allocation_exponents()
    assert a == pytest.approx(0.28 / 0.62, rel=1e-6) and a + b == pytest.approx(1.0)


def test_unequal_exponents_and_other_constants_recovered():
    p = {"E": 2.1, "A": 80.0, "B": 2500.0, "alpha": 0.22, "beta": 0.41}
    N, D = _grid()
    fit = varpro.fit_varpro(N, D, _loss(N, D, p))
    for k, v in p.items():
        assert getattr(fit, k) == pytest.approx(v, rel=1e-6), k


def test_too_few_points_is_refused():
    with pytest.raises(ValueError, match="at least 6"):
        varpro.fit_varpro([1e6, 1e7], [1e9, 1e9], [3.0, 2.9])
