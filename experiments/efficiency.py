"""Model-size sweep with dense learning curves: sample efficiency, loss by position, OOD shift.

One sweep serves three analyses (Kaplan et al. 2020 §3.2.2, §3.3, §5):

    jaxscale sweep run experiments/efficiency.py --setting tiny --results results/sizes-tiny
    jaxscale efficiency results/sizes-tiny          # tokens-to-loss vs N, L(N, S) extrapolation
    jaxscale eval results/sizes-tiny --per-position --sets stdlib,site-packages,prose
    jaxscale shift results/sizes-tiny               # OOD loss vs in-distribution loss offset

Every size trains on the same token budget with the same schedule and evaluates often (every
~1/15 of the run), so the curves resolve when each model first reaches a given loss. `tiny`
(4 sizes, 25k-100k non-embedding params, context 64, 300 steps) takes about a minute on 2 CPU
cores; `default` (5 sizes up to ~0.8M, context 128, 2000 steps) about an hour.
"""

from __future__ import annotations

import dataclasses

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import with_steps

NAME = "sizes"
DESCRIPTION = "model-size sweep with dense eval curves (sample efficiency, position, shift)"
SETTINGS = ("default", "tiny")
CONVENTION = "kaplan_attn"

SHAPES = {
    "tiny": [(16, 1), (32, 1), (32, 2), (64, 2)],
    "default": [(32, 2), (48, 2), (64, 2), (96, 3), (128, 4)],
}


def runs(setting: str = "default") -> list[RunConfig]:
    """One run per model size, identical data, schedule and token budget."""
    tiny = setting == "tiny"
    base = RunConfig(
        model=ModelConfig(context_length=64 if tiny else 128, vocab_size=257),
        data=DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=8_000_000),
        train=TrainConfig(
            batch_size=8 if tiny else 16,
            lr=3e-3 if tiny else 2e-3,
            warmup_steps=15 if tiny else 50,
            eval_batches=4 if tiny else 8,
            checkpoint_every=1000 if tiny else 500,
            keep_checkpoints=1,
        ),
        name=NAME,
    )
    steps = 300 if tiny else 2000
    out = []
    for w, d in SHAPES["tiny" if tiny else "default"]:
        mc = base.model.resized(w, d, head_dim=16)
        cfg = with_steps(dataclasses.replace(base, model=mc), steps, evals=15)
        out.append(dataclasses.replace(cfg, name=f"{NAME}_N{mc.n_params_nonembedding}"))
    return out
