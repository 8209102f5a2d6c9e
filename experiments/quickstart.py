"""Quickstart: an isoFLOP study (Hoffmann et al. 2022, approach 2) on byte-level stdlib source.

    jaxscale sweep run experiments/quickstart.py            # ~4-5 min on a 2-core CPU
    jaxscale frontier results/quickstart                    # envelope, N_opt(C), plots

3 compute budgets (1e10, 3e10, 1e11 kaplan_attn FLOPs) × 4 model sizes each, 0.8k–25k
non-embedding parameters, context 128, batch 4 sequences, each size at the peak LR of
LR_RULE (0.080 at 0.8k down to 0.0072 at 25k; train.lr_rule records it). Each run trains for
the tokens that spend its budget exactly, up to step rounding (`jaxscale sweep status` shows
it). With every size at its own LR, byte-level models at these budgets are compute-optimal
near 1e3–5e3 parameters (measured 2026-11-30: N_opt = 4.3e3 [2.5e3, 6.5e3] at 3e10; at 1e10
and 1e11 the smallest size was best or tied), so the profiles centre there. The earlier grid
(3e10–3e11, 3k–99k) was centred for one LR of 3e-3, which handicapped the small models by
0.14–0.27 nats and moved the optimum up (docs/hyperparameters.md).

The `tiny` setting (3 budgets × 3 sizes, context 64) runs in about a minute on an idle
machine and is what the test suite runs:

    jaxscale sweep run experiments/quickstart.py --setting tiny   # -> results/quickstart-tiny
"""

from __future__ import annotations

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import isoflop_runs
from jaxscale.runs.hparams import LR_BYTE_SMALL, Rule

NAME = "quickstart"
DESCRIPTION = "isoFLOP profiles of small byte-level transformers on Python stdlib source"
SETTINGS = ("default", "tiny")
CONVENTION = "kaplan_attn"

# Each profile is centred on where its optimum is expected (Hoffmann 2022 chose sizes per
# budget too): a sweep of 0.5–1.5 decades in N around it, so both sides of the valley show.
BUDGETS = {
    1e10: [(8, 1), (8, 2), (16, 1), (16, 2)],
    3e10: [(8, 2), (16, 1), (16, 2), (32, 1)],
    1e11: [(16, 1), (16, 2), (32, 1), (32, 2)],
}
# Three budgets x three sizes: nine runs, enough points for the 5-parameter L(N, D) fit.
TINY_BUDGETS = {
    5e8: [(16, 1), (32, 1), (32, 2)],
    1e9: [(16, 1), (32, 1), (32, 2)],
    3e9: [(16, 1), (32, 1), (32, 2)],
}


# Each size trains at its own peak LR: one LR for all sizes confounds the fitted exponents with
# LR mistuning (the best LR falls ~20x from 3k to 99k parameters here). LR_BYTE_SMALL is fitted
# to LR optima measured at six runs of the earlier quickstart grid (`experiments/step_law.py
# --setting quickstart`) and two from the kit's LR study: η = 8.65·N^-0.70, no D term (none
# measurable at this scale); it extrapolates to the two sizes below 3k (warned by
# hparams.explain). Step Law's constants give 7-20x larger LRs here, which cost 3-15% in loss
# (docs/hyperparameters.md). lr_rule=Constant(3e-3) trains this grid at one LR.
LR_RULE: Rule = LR_BYTE_SMALL


def base(tiny: bool) -> RunConfig:
    """The config every run starts from (also experiments/quickstart_branched.py's)."""
    return RunConfig(
        model=ModelConfig(context_length=64 if tiny else 128, vocab_size=257),
        data=DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=8_000_000),
        train=TrainConfig(
            batch_size=4,
            warmup_steps=10,
            eval_batches=4 if tiny else 8,
            checkpoint_every=100 if tiny else 200,
            keep_checkpoints=1,
        ),
        name=NAME,
    )


def runs(
    setting: str = "default", *, lr_rule: Rule | None = None, batch_rule: Rule | None = None
) -> list[RunConfig]:
    """The study's runs for `setting` ('default' or 'tiny'); LR_RULE sets each run's peak LR
    unless lr_rule is given, and batch_rule (default none: 4 sequences) its batch."""
    tiny = setting == "tiny"
    budgets = TINY_BUDGETS if tiny else BUDGETS
    return isoflop_runs(
        base(tiny),
        list(budgets),
        budgets,
        convention=CONVENTION,
        head_dim=16,
        min_steps=20,
        evals=4,
        prefix=NAME,
        lr_rule=lr_rule or LR_RULE,
        batch_rule=batch_rule,
    )
