"""Width vs depth at fixed non-embedding N (Kaplan et al. 2020 Fig. 5), for `jaxscale shape`.

    jaxscale sweep run experiments/shapes.py                  # ~15 min on a 2-core CPU
    jaxscale sweep run experiments/shapes.py --setting tiny   # under a minute

Two sizes (~100k and ~400k non-embedding params), depths 1–8, each shape trained on the same
2^19 tokens; shapes whose N misses the target by more than 15% are dropped by the generator.
"""

from __future__ import annotations

from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.sweep import shape_grid_runs

NAME = "shapes"
DESCRIPTION = "(n_layers, d_model) pairs at fixed non-embedding parameter count"
SETTINGS = ("default", "tiny")
CONVENTION = "kaplan_attn"


def runs(setting: str = "default") -> list[RunConfig]:
    """The shape grid for `setting` ('default' or 'tiny')."""
    tiny = setting == "tiny"
    base = RunConfig(
        model=ModelConfig(context_length=64 if tiny else 128, vocab_size=257),
        train=TrainConfig(batch_size=4 if tiny else 8, lr=2e-3, warmup_steps=10, eval_batches=8),
        name=NAME,
    )
    if tiny:
        return shape_grid_runs(base, 12_000, [1, 2, 4], tokens=2**13, head_dim=8, prefix=NAME)
    out: list[RunConfig] = []
    for n in (100_000, 400_000):
        out += shape_grid_runs(base, n, [1, 2, 3, 4, 6, 8], tokens=2**19, head_dim=16, prefix=NAME)
    return out
