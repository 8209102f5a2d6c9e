"""Backtests and CSV fitting from the command line: hold-out specs, column mapping, filters,
one-line errors, exit codes. Laplace fits keep it fast; NUTS backtests run in test_report.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxscale import cli
from jaxscale.analysis import fit as F


def _isoflop(budgets=(1e18, 1e19, 1e20, 1e21), sizes: int = 6, seed: int = 0) -> pd.DataFrame:
    """Chinchilla-law losses (Hoffmann 2022 eq. 2) with 0.5% noise on an isoFLOP design."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for n in math.sqrt(c / 120) * np.geomspace(1 / 5, 5, sizes):
            d = c / (6 * n)
            loss = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * math.exp(0.005 * rng.normal())
            rows.append({"N": n, "D": d, "C": c, "loss": loss})
    return pd.DataFrame(rows)


def test_holdout_specs_select_what_they_say() -> None:
    df = _isoflop()
    prob = F.setup(df, "chinchilla")
    top = F.holdout_mask(prob, "top-budget")
    assert top.sum() == 6 and np.allclose(prob.data.level_c[top], 1e21)
    big = F.holdout_mask(prob, "largest-n")
    assert prob.data.x["N"][big].min() == prob.data.x["N"].max()
    last = F.holdout_mask(prob, "last:4")
    assert last.sum() == 4 and np.allclose(prob.data.level_c[last], 1e21)
    q = F.holdout_mask(prob, "N > 3e9", F.inference.canonical(df))
    assert (prob.data.x["N"][q] > 3e9).all() and q.sum() == (df["N"] > 3e9).sum()
    for spec, match in (
        ("last:0", "K must be between"),
        ("bogus spec ((", "not one of"),
    ):
        with pytest.raises(ValueError, match=match):
            F.holdout_mask(prob, spec, F.inference.canonical(df))


def test_backtest_passes_on_the_true_form_and_fails_on_a_broken_top_budget() -> None:
    df = _isoflop()
    good = F.backtest(df, "top-budget", method="laplace", draws=3000, quiet=True)
    assert good.passed and good.n == 6 and "PASSED" in good.headline()
    bad = df.copy()
    bad.loc[bad["C"] == 1e21, "loss"] *= 0.85  # the top budget is 15% better than the law
    worse = F.backtest(bad, "top-budget", method="laplace", draws=3000, quiet=True)
    assert not worse.passed and worse.n_inside <= 2
    assert "lower than predicted" in worse.diagnosis()
    assert "FAILED" in worse.headline()


def test_cli_fits_and_backtests_a_foreign_csv_in_one_command(tmp_path: Path, capsys) -> None:
    """Column mapping, a filter, best-of-LR per (N, D), a hold-out: one command, exit 0."""
    df = _isoflop()
    rows = []
    for r in df.itertuples():
        for lr, pen in ((1e-3, 0.03), (3e-3, 0.0), (1e-2, 0.05)):  # best LR is 3e-3
            rows.append(
                {
                    "non_embedding_params": r.N,
                    "tokens_seen": r.D,
                    "val_loss": r.loss * (1 + pen),
                    "lr": lr,
                    "dataset": "web",
                }
            )
    rows.append(
        {
            "non_embedding_params": 1e8,
            "tokens_seen": 1e9,
            "val_loss": 9.9,
            "lr": 3e-3,
            "dataset": "code",
        }
    )  # filtered out by --where
    csv = tmp_path / "study.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    out = tmp_path / "fit"
    code = cli.main(
        [
            "fit", str(csv), "--n-col", "non_embedding_params", "--d-col", "tokens_seen",
            "--loss-col", "val_loss", "--where", "dataset == 'web'", "--best-of",
            "non_embedding_params,tokens_seen", "--holdout", "top-budget", "--method",
            "laplace", "--out", str(out), "--no-plots",
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    assert "kept 24 of 73 rows" in text
    assert "backtest (top-budget, 6 held out" in text and "PASSED" in text
    assert "90% central interval" in text
    bt = pd.read_csv(out / "backtest.csv")
    assert len(bt) == 6 and bt["inside"].sum() >= 5
    assert (out / "backtest.json").exists() and (out / "summary.json").exists()


def test_cli_exit_1_when_the_backtest_fails(tmp_path: Path, capsys) -> None:
    df = _isoflop()
    df.loc[df["C"] == 1e21, "loss"] *= 0.85
    csv = tmp_path / "broken.csv"
    df.to_csv(csv, index=False)
    code = cli.main(["fit", str(csv), "--holdout", "top-budget", "--method", "laplace"])
    assert code == 1 and "BACKTEST FAILED" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, args, match",
    [
        ("N,D,loss\n", [], "no data rows (header only"),
        ('N,D,loss\n1,2,3,4\n"x\n', [], "not a readable CSV"),
        ("N,D,loss\n1e8,1e9,3.0\n", ["--n-col", "params"], "column(s) ['params'] (for ['N'])"),
        ("N,D,loss\n1e8,1e9,abc\n2e8,1e9,2.9\n", [], "column 'loss' is not numeric"),
        ("N,D,loss\n1e8,1e9,3.0\n", ["--where", "N >"], "--where 'N >'"),
    ],
    ids=["header_only", "malformed", "missing_mapped", "non_numeric", "bad_where"],
)
def test_cli_bad_csv_is_one_line_and_exit_2(tmp_path: Path, capsys, content, args, match) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text(content)
    code = cli.main(["fit", str(csv), "--method", "map", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
