"""Learning-rate × model-size (× batch-size) sweep for LR sensitivity (Kaplan et al. 2020 App. D.6).

    jaxscale sweep run experiments/lr.py --setting tiny --results results/lr-tiny
    jaxscale lr results/lr-tiny        # loss vs LR per size, fitted optimum, drift with N and B

Each size trains on the same token budget at peak learning rates spaced by ×2 from too small to
near divergence, with warmup and cosine decay to 10% (the schedule under which Kaplan reports
the loss to be insensitive to the LR over a broad range). The middle size is repeated at a
second batch size (same tokens) so the optimum's drift with B is measured too. `tiny` (3 sizes
× 8 LRs 5e-4..6.4e-2, + 8 runs at batch 16; context 64, 150 steps) takes about 5-8 minutes on
2 shared CPU cores. The grid reaches down to 5e-4 because the 99k model's optimum sits near
2e-3: a grid starting there leaves it at the edge, unbracketed (docs/analyses.md §3).
"""

from __future__ import annotations

import dataclasses

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import lr_grid_runs

NAME = "lr"
DESCRIPTION = "peak learning rate × model size (and batch size) grid"
SETTINGS = ("default", "tiny")
CONVENTION = "kaplan_attn"


def runs(setting: str = "default") -> list[RunConfig]:
    """LR grid per size at batch B, plus the middle size at batch 2B (same tokens)."""
    tiny = setting == "tiny"
    B = 8 if tiny else 16
    ctx = 64 if tiny else 128
    base = RunConfig(
        model=ModelConfig(context_length=ctx, vocab_size=257),
        data=DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=8_000_000),
        train=TrainConfig(
            batch_size=B,
            warmup_steps=10 if tiny else 50,
            eval_batches=4 if tiny else 8,
            checkpoint_every=1000 if tiny else 1000,
            keep_checkpoints=1,
        ),
        name=NAME,
    )
    shapes = [(16, 1), (32, 2), (64, 2)] if tiny else [(32, 2), (64, 2), (96, 3), (128, 4)]
    lrs = [5e-4 * 2**k for k in range(8)] if tiny else [2.5e-4 * 2**k for k in range(8)]
    tokens = (150 if tiny else 1500) * B * ctx
    out = lr_grid_runs(base, shapes, lrs, tokens=tokens, evals=4, prefix=NAME, head_dim=16)
    big = dataclasses.replace(base, train=dataclasses.replace(base.train, batch_size=2 * B))
    mid = [shapes[len(shapes) // 2]]
    out += lr_grid_runs(
        big, mid, lrs, tokens=tokens, evals=4, prefix=f"{NAME}_B{2 * B}", head_dim=16
    )
    return out
