"""N × D grid for fitting L(N, D) jointly (Hoffmann et al. 2022 approach 3; Besiroglu 2024).

    jaxscale sweep run experiments/nd_grid.py                 # ~25 min on a 2-core CPU
    jaxscale sweep run experiments/nd_grid.py --setting tiny  # under a minute

5 sizes (25k–0.8M non-embedding params) × 4 token counts (2^17–2^20 tokens, context 128):
every size sees every data amount, so the fitter separates the N and D terms. Each run's peak
LR comes from LR_RULE (runs.hparams.LR_BYTE_SMALL, η = 8.65·N^-0.70, measured on 3k–99k
parameters, 7.7e4–1.6e6 tokens, 512 tokens/step): the larger sizes and this grid's 1024
tokens/step are extrapolations, listed with their 90% intervals by
`jaxscale.runs.hparams.explain(runs(), LR_RULE)`; a Step Law study of this range
(experiments/step_law.py) is what would replace the rule.
"""

from __future__ import annotations

from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import nd_grid_runs
from jaxscale.runs.hparams import LR_BYTE_SMALL, Rule

NAME = "nd_grid"
DESCRIPTION = "every model size × every token count, for a joint L(N, D) fit"
SETTINGS = ("default", "tiny")
CONVENTION = "kaplan_attn"


# A per-size LR (small models want larger ones): one LR for every size would confound the
# fitted exponents with LR mistuning. Pass lr_rule=Constant(2e-3) for the old grid.
LR_RULE: Rule = LR_BYTE_SMALL


def runs(
    setting: str = "default", *, lr_rule: Rule | None = None, batch_rule: Rule | None = None
) -> list[RunConfig]:
    """The grid for `setting` ('default' or 'tiny'); LR_RULE sets each run's peak LR unless
    lr_rule is given, batch_rule (default none) its batch."""
    tiny = setting == "tiny"
    base = RunConfig(
        model=ModelConfig(context_length=64 if tiny else 128, vocab_size=257),
        train=TrainConfig(batch_size=4 if tiny else 8, warmup_steps=10, eval_batches=8),
        name=NAME,
    )
    rules = {"lr_rule": lr_rule or LR_RULE, "batch_rule": batch_rule}
    if tiny:
        shapes, tokens = [(16, 1), (32, 2)], [2**13, 2**15]
    else:
        shapes = [(32, 2), (48, 2), (64, 2), (96, 3), (128, 4)]
        tokens = [2**17, 2**18, 2**19, 2**20]
    return nd_grid_runs(base, shapes, tokens, head_dim=16, prefix=NAME, **rules)
