"""The N × D grid (experiments/nd_grid.py) in branch form: one constant-LR trunk per size and a
short cooldown branch per token count (Hägele et al. 2024; docs/branches.md).

    jaxscale sweep run experiments/nd_grid_branched.py                 # 46% of its points trained alone
    jaxscale sweep run experiments/nd_grid_branched.py --setting tiny
    jaxscale sweep run experiments/nd_grid_branched.py --setting independent  # same points

Same sizes, LR rule and batch as nd_grid, with seven token counts a factor √2 apart over the same
range (2^17–2^20; tiny: 2^13–2^15) instead of four: every branch is a wsd run whose last 20% of
steps cool down with a (1-sqrt) shape from the trunk's checkpoint at its decay start, so a size
costs its trunk (80% of its largest D) plus 20% of each D. `jaxscale sweep run` prints the spend
against the same (N, D) points trained independently; the frontier and fit read the branches
like any run, and leave the trunks (status 'trunk') out.
"""

from __future__ import annotations

from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.branches import COOLDOWN, SHAPE, branched, independent
from jaxscale.runs.grids import nd_grid_runs
from jaxscale.runs.hparams import LR_BYTE_SMALL, Rule

NAME = "nd_grid_branched"
DESCRIPTION = "every model size × every token count from one trunk per size and cooldown branches"
SETTINGS = ("default", "tiny", "independent", "tiny-independent")
CONVENTION = "kaplan_attn"
LR_RULE: Rule = LR_BYTE_SMALL


def tokens(lo: int, hi: int, per_octave: int = 2) -> list[int]:
    """Token counts from 2^lo to 2^hi, `per_octave` per factor of two."""
    return [round(2 ** (lo + i / per_octave)) for i in range((hi - lo) * per_octave + 1)]


def runs(
    setting: str = "default",
    *,
    lr_rule: Rule | None = None,
    batch_rule: Rule | None = None,
    cooldown: float = COOLDOWN,
    shape: str = SHAPE,
) -> list[RunConfig]:
    """Trunks then branches for `setting`; '*independent' settings give the same (N, D) points
    as independent wsd runs of the same schedules (the comparison grid)."""
    tiny = setting.startswith("tiny")
    base = RunConfig(
        model=ModelConfig(context_length=64 if tiny else 128, vocab_size=257),
        train=TrainConfig(batch_size=4 if tiny else 8, warmup_steps=10, eval_batches=8),
        name=NAME,
    )
    rules = {"lr_rule": lr_rule or LR_RULE, "batch_rule": batch_rule}
    if tiny:
        shapes, ds = [(16, 1), (32, 2)], tokens(13, 15)
    else:
        shapes, ds = [(32, 2), (48, 2), (64, 2), (96, 3), (128, 4)], tokens(17, 20)
    plain = nd_grid_runs(base, shapes, ds, head_dim=16, prefix="ndb", **rules)
    out = branched(plain, cooldown=cooldown, shape=shape)
    return independent(out) if setting.endswith("independent") else out
