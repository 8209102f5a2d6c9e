"""The quickstart isoFLOP study in branch form: one constant-LR trunk per model size and a short
cooldown branch per budget (Hägele et al. 2024; docs/branches.md). What scripts/quickstart.sh
runs.

    jaxscale sweep run experiments/quickstart_branched.py     # -> results/quickstart_branched
    jaxscale frontier results/quickstart_branched            # envelope, N_opt(C), plots

The budgets, context, batch and LR rule of experiments/quickstart.py (1e10, 3e10, 1e11
kaplan_attn FLOPs; context 128; 4 sequences; LR_BYTE_SMALL per size), with a depth-1 size
(w12, 1.8k parameters) in place of the w8·d2 one, so every profile's sizes come from one
family. A size that appears at several budgets trains one trunk, as long as its largest
branch's decay start, and each budget's run is a branch off it: the trunk's checkpoint at that
run's decay start, then the last 20% of its steps cooled down as 1 − sqrt (branches.SHAPE).
A size at one budget only (0.8k, 25k) is a plain run with the same schedule. Every branch is the
wsd run of its budget (run ID, D, C and loss as such); the trunks (status 'trunk') are no points
of the frontier or fit. `jaxscale sweep run` prints the FLOPs spent
against the same (N, D) points trained independently; the `independent` setting trains exactly
those independent wsd runs (for comparisons, docs/branches.md).

    jaxscale sweep run experiments/quickstart_branched.py --setting tiny

Measured against experiments/quickstart.py run at the same time (BENCHMARKS.md): 83% of its
FLOPs for the same number of points, the same wall time, every budget's optimum bracketed. Its
backtest passed with the LR schedule applied twice (the code before b38e776) and fails with it
applied once (1/4 held-out points inside their bands): not yet fixed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from jaxscale.config import RunConfig
from jaxscale.runs.branches import COOLDOWN, SHAPE, branched, independent
from jaxscale.runs.grids import isoflop_runs
from jaxscale.runs.hparams import Rule


def _quickstart():
    """experiments/quickstart.py, whose base config, tiny budgets, convention and LR rule this
    study shares (a study file is loaded by path, not imported as a package)."""
    spec = importlib.util.spec_from_file_location(
        "jaxscale_study_quickstart_base", Path(__file__).with_name("quickstart.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


QS = _quickstart()

NAME = "quickstart_branched"
DESCRIPTION = "isoFLOP profiles from one trunk per size and cooldown branches per budget"
SETTINGS = ("default", "tiny", "independent", "tiny-independent")
CONVENTION = QS.CONVENTION

# Each profile centred on where its optimum is expected (experiments/quickstart.py measured
# N_opt ≈ 1e3 at 1e10 and 3e3–6e3 at 3e10–1e11 with these LRs); sizes repeat across budgets so
# their trunks are shared.
BUDGETS = {
    1e10: [(8, 1), (12, 1), (16, 1), (16, 2)],
    3e10: [(12, 1), (16, 1), (16, 2), (32, 1)],
    1e11: [(16, 1), (16, 2), (32, 1), (32, 2)],
}
TINY_BUDGETS = QS.TINY_BUDGETS
LR_RULE: Rule = QS.LR_RULE


def runs(
    setting: str = "default",
    *,
    lr_rule: Rule | None = None,
    cooldown: float = COOLDOWN,
    shape: str = SHAPE,
) -> list[RunConfig]:
    """Trunks then branches for `setting`; '*independent' settings give the branches' own
    wsd runs trained from scratch instead."""
    tiny = setting.startswith("tiny")
    budgets = TINY_BUDGETS if tiny else BUDGETS
    plain = isoflop_runs(
        QS.base(tiny),
        list(budgets),
        budgets,
        convention=CONVENTION,
        head_dim=16,
        min_steps=20,
        evals=4,
        prefix="quickstart",
        lr_rule=lr_rule or LR_RULE,
    )
    out = branched(plain, cooldown=cooldown, shape=shape)
    return independent(out) if setting.endswith("independent") else out
