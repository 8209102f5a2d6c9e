"""Critical batch size: a batch-size sweep at a fixed model (Kaplan et al. 2020 §5.1).

    jaxscale sweep run experiments/critical_batch.py --setting tiny  # results/critical_batch-tiny
    jaxscale critical-batch results/critical_batch-tiny              # S/E trade-off, B_crit(L)

Every run trains the same model at a different batch size B with a constant learning rate after
warmup (so a run's loss at step S does not depend on its length, as the S-E trade-off assumes,
McCandlish et al. 2018 §2.2). Runs see the same number of tokens but at least `MIN_STEPS`
steps, so the large batches still reach the target losses. Every run accumulates over two
microbatches with train.gns=true, so the gradient noise scale B_simple is logged along the way
(McCandlish 2018 App. A.1) for comparison with the empirical B_crit.

The learning rate is fixed across B rather than tuned per B (Kaplan and McCandlish tune it):
the fitted S_min, E_min are then those of this one LR, which mostly penalises the smallest B.
"""

from __future__ import annotations

import dataclasses

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import batch_grid_runs, with_steps

NAME = "critical_batch"
DESCRIPTION = "steps vs examples to reach fixed losses across batch sizes, and B_simple"
SETTINGS = ("default", "tiny", "smoke")
CONVENTION = "kaplan_attn"

SETUPS = {
    # setting: (d_model, n_layers, context, batch sizes, tokens per run, min steps)
    "default": (64, 2, 128, (4, 8, 16, 32, 64, 128, 256), 6_000_000, 400),
    "tiny": (32, 2, 64, (4, 8, 16, 32, 64), 400_000, 150),
    # about a minute on 2 cores: what notebooks/03_critical_batch.ipynb runs
    "smoke": (32, 2, 32, (4, 8, 16, 32, 64), 60_000, 100),
}


def runs(setting: str = "default") -> list[RunConfig]:
    """The batch sweep for `setting` ('default', 'tiny' or 'smoke')."""
    d, n_layers, ctx, batches, tokens, min_steps = SETUPS[setting]
    base = RunConfig(
        model=ModelConfig.from_width_depth(d, n_layers, head_dim=16, context_length=ctx),
        data=DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=8_000_000),
        train=TrainConfig(
            lr=3e-3,
            schedule="constant",
            warmup_steps=10,
            grad_accum=2,
            gns=True,
            gns_ema=0.95,
            eval_batches=2,
            checkpoint_every=1000,
            keep_checkpoints=1,
        ),
        name=NAME,
    )
    out = []
    for cfg in batch_grid_runs(base, batches, tokens=tokens, evals=10, prefix=NAME):
        if cfg.train.steps < min_steps:
            tc = dataclasses.replace(cfg.train, warmup_steps=base.train.warmup_steps)
            cfg = with_steps(dataclasses.replace(cfg, train=tc), min_steps, evals=10)
            B = cfg.train.batch_size
            cfg = dataclasses.replace(cfg, name=f"{NAME}_B{B}_S{min_steps}")
        out.append(cfg)
    return out
