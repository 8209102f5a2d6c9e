"""N × D grid for fitting L(N, D) jointly (Hoffmann et al. 2022 approach 3; Besiroglu 2024).

    jaxscale sweep run experiments/nd_grid.py                 # ~25 min on a 2-core CPU
    jaxscale sweep run experiments/nd_grid.py --setting tiny  # under a minute

5 sizes (25k–0.8M non-embedding params) × 4 token counts (2^17–2^20 tokens, context 128):
every size sees every data amount, so the fitter separates the N and D terms.
"""

from __future__ import annotations

from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import nd_grid_runs

NAME = "nd_grid"
DESCRIPTION = "every model size × every token count, for a joint L(N, D) fit"
SETTINGS = ("default", "tiny")
CONVENTION = "kaplan_attn"


def runs(setting: str = "default") -> list[RunConfig]:
    """The grid for `setting` ('default' or 'tiny')."""
    tiny = setting == "tiny"
    base = RunConfig(
        model=ModelConfig(context_length=64 if tiny else 128, vocab_size=257),
        train=TrainConfig(batch_size=4 if tiny else 8, lr=2e-3, warmup_steps=10, eval_batches=8),
        name=NAME,
    )
    if tiny:
        return nd_grid_runs(base, [(16, 1), (32, 2)], [2**13, 2**15], head_dim=16, prefix=NAME)
    shapes = [(32, 2), (48, 2), (64, 2), (96, 3), (128, 4)]
    return nd_grid_runs(base, shapes, [2**17, 2**18, 2**19, 2**20], head_dim=16, prefix=NAME)
