"""Gradient noise scale B_simple = tr(Sigma)/|G|^2 from two batch sizes (McCandlish et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass, field


def noise_scale_terms(
    g_small_sq: float, g_big_sq: float, b_small: float, b_big: float
) -> tuple[float, float]:
    """Unbiased |G|^2 and tr(Sigma) from two batch sizes (McCandlish et al. 2018, App. A.1).

    |G|^2 ~= (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(S) ~= (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)
    """
    if not b_big > b_small > 0:
        raise ValueError(f"need b_big > b_small > 0, got b_small={b_small}, b_big={b_big}")
    g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    tr_sigma = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, tr_sigma


@dataclass
class NoiseScaleEMA:
    """EMA of |G|^2 and tr(Sigma) kept separately, B_simple = tr(Sigma)/|G|^2 of the EMAs."""

    b_small: float
    b_big: float
    decay: float = 0.95
    g2: float = field(default=0.0)
    tr_sigma: float = field(default=0.0)
    weight: float = field(default=0.0)

    def update(self, g_small_sq: float, g_big_sq: float) -> float:
        """Fold in one step's squared norms; return the bias-corrected B_simple (sequences)."""
        g2, tr = noise_scale_terms(g_small_sq, g_big_sq, self.b_small, self.b_big)
        d = self.decay
        self.g2 = d * self.g2 + (1 - d) * g2
        self.tr_sigma = d * self.tr_sigma + (1 - d) * tr
        self.weight = d * self.weight + (1 - d)
        return self.b_simple

    def state(self) -> dict[str, float]:
        """The running EMAs, for a checkpoint (a resumed run continues them with `load`)."""
        return {"g2": self.g2, "tr_sigma": self.tr_sigma, "weight": self.weight}

    def load(self, state: dict[str, float]) -> None:
        """Continue from `state()` of an earlier run of the same config."""
        self.g2, self.tr_sigma, self.weight = state["g2"], state["tr_sigma"], state["weight"]

    @property
    def b_simple(self) -> float:
        """B_simple = tr(Sigma)/|G|^2 (McCandlish et al. 2018, eq. 2.8); NaN until |G|^2 > 0."""
        if self.weight == 0 or self.g2 <= 0:
            return float("nan")
        return self.tr_sigma / self.g2
