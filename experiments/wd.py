"""Weight decay as an axis: the optimal AdamW timescale τ = B/(ηλD) vs tokens per parameter.

    jaxscale sweep run experiments/wd.py --setting tiny --results results/wd-tiny   # ~3 min
    jaxscale timescale results/wd-tiny     # τ_opt per (N, D), τ_opt = c·(D/N)^k beside Bergsma

Wang & Aitchison 2024 read AdamW's weights as an EMA of recent updates with timescale
1/(ηλ) steps; as a fraction of the run that is τ = B/(ηλD) (B tokens/step, D tokens, η the
peak LR). Bergsma et al. 2025 find the optimal τ falls as a power law in tokens per parameter
D/N. Each (N, D) cell here trains at its size's LR (runs.hparams.LR_BYTE_SMALL) over a grid
in τ — λ = B/(η τ D) per run, so the grid stays centred whatever η and D are — plus one run
without decay (λ = 0) as the baseline any decay has to beat.

Settings:
  tiny     1 size (3.1k non-embedding, d=16, 1 layer) × 5 D (75-1200 steps of 8×64 tokens, ×2
           apart: D/N 12.3 to 197) × 9 τ (1/32..8, ×2 apart) + λ = 0, × 3 seeds; 150 runs,
           context 64, cosine to 10%. One size, so D/N moves with D alone. Runs differing only
           in seed or λ share a vmapped step (λ is data of the step, like the LR; groups of
           up to 8). τ = 1/32 and 1/16 were added after a first 120 runs put the best τ at
           the grid's smallest (1/8) for D/N 49 and 197. 3 min 25 s on 2 idle CPU cores
           with nothing compiled yet (2026-12-01; 5 min 12 s with each λ its own group, as
           before: BENCHMARKS.md); results in docs/hyperparameters.md.
  default  3 sizes (0.1M-0.8M non-embedding, context 128, batch 16) × 3 D (1000-16000
           steps) × 7 τ (1/64..1, ×2 apart) + λ = 0. Planned, never run here.
"""

from __future__ import annotations

import dataclasses

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import wd_grid_runs
from jaxscale.runs.hparams import LR_BYTE_SMALL, Rule

NAME = "wd"
DESCRIPTION = "weight decay (AdamW timescale τ) × model size × tokens, for τ_opt(D/N)"
SETTINGS = ("default", "tiny")
CONVENTION = "kaplan_attn"

# The per-size LR the τ grid is built around: a mistuned η would move the best λ with it.
LR_RULE: Rule = LR_BYTE_SMALL


def runs(setting: str = "default") -> list[RunConfig]:
    """Each (N, D) cell × a grid in τ (λ = B/(η τ D)), plus one run per cell with λ = 0."""
    tiny = setting == "tiny"
    B = 8 if tiny else 16
    ctx = 64 if tiny else 128
    base = RunConfig(
        model=ModelConfig(context_length=ctx, vocab_size=257),
        data=DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=8_000_000),
        train=TrainConfig(
            batch_size=B,
            warmup_steps=10 if tiny else 50,
            eval_batches=8,
            checkpoint_every=1000,
            keep_checkpoints=1,
        ),
        name=NAME,
    )
    shapes = [(16, 1)] if tiny else [(64, 2), (96, 3), (128, 4)]
    steps = [75 * 2**i for i in range(5)] if tiny else [1000, 4000, 16000]
    tokens = [s * B * ctx for s in steps]
    taus = [2.0**k for k in range(-5, 4)] if tiny else [2.0**k for k in range(-6, 1)]
    kw = {"evals": 4, "prefix": NAME, "lr_rule": LR_RULE, "head_dim": 16}
    cells = wd_grid_runs(base, shapes, tokens, taus=taus, **kw) + wd_grid_runs(
        base, shapes, tokens, wds=[0.0], **kw
    )
    # Seeds share one vmapped step, so they cost far less than a finer τ grid: at this scale
    # run-to-run noise is comparable with the loss differences across τ near the optimum.
    seeds = range(3) if tiny else range(1)
    return [
        c
        if s == 0
        else dataclasses.replace(
            c, train=dataclasses.replace(c.train, seed=s), name=f"{c.name}_s{s}"
        )
        for c in cells
        for s in seeds
    ]
