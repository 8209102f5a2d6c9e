"""Step Law study: peak LR × batch size × model size N × tokens D (Li et al. 2025).

    jaxscale sweep run experiments/step_law.py --setting tiny   # -> results/step_law-tiny
    jaxscale step-law results/step_law-tiny                     # η_opt(N, D), B_opt(D), landscapes

For every (N, D) the runs cover a grid of peak LRs η and batch sizes B (tokens per step); the
analysis (jaxscale.analysis.step_law) finds the best (η, B) per (N, D) and fits
η_opt = c·N^a·D^b, B_opt = c·D^b and B_opt = c·N^a·D^b (does N matter?) beside Step Law's
η = 1.79 N^-0.713 D^0.307, B = 0.58 D^0.571 (N non-embedding, D tokens, B tokens/step).
Li et al. decay to a final LR of 1e-5; these runs decay to 0 (train.min_lr_ratio = 0), which
differs from theirs by under 1e-5 in absolute LR.

Settings:
  tiny        3 sizes (3k-25k non-embedding) × 2 D (2^15, 2^17 tokens) × 3 B (128-512 tokens)
              × 4 LRs (×2^-1.5..2^1.5 around LR_BYTE_SMALL), context 64, every run evaluated
              on the same 256 windows: a smoke test of the pipeline (~6 min on 2 loaded CPU
              cores; the optima are noisy and D is tiny), not a measurement.
  quickstart  the LR check behind experiments/quickstart.py's rule: 7 LRs (×1/4..×16 around
              the LR-study rule) at 6 (N, D) points of the quickstart's earlier grid (budgets
              3e10-3e11, N 3k-99k), its batch (512 tokens) and context (128).
  default     GPU (~30 A100-hours at 40% MFU): 3 sizes (3M-25M non-embedding, head_dim 64,
              context 1024, BPE 4096) × 3 D (1e8-1.6e9) × 5 B × 7 LRs around Step Law.
  large       TPU-pod scale, Step Law's own range: 3 sizes (~0.1B-0.4B) × 3 D (2e9-3.2e10)
              × 4 B × 5 LRs around Step Law. Planned, never run here.
"""

from __future__ import annotations

import dataclasses

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import isoflop_plan, lr_grid_runs
from jaxscale.runs.hparams import LR_BYTE_SMALL, LR_STUDY_TINY, Rule, StepLaw

NAME = "step_law"
DESCRIPTION = "LR × batch × N × D grid for η_opt(N, D), B_opt(D) (Li et al. 2025 Step Law)"
SETTINGS = ("default", "tiny", "quickstart", "large")
CONVENTION = "kaplan_attn"


def _octaves(lo: int, hi: int) -> tuple[float, ...]:
    return tuple(2.0**k for k in range(lo, hi + 1))


def _base(context: int, data: DataConfig, **train_kw) -> RunConfig:
    return RunConfig(
        model=ModelConfig(context_length=context, vocab_size=257),
        data=data,
        train=TrainConfig(steps=100_000, min_lr_ratio=0.0, keep_checkpoints=1, **train_kw),
        name=NAME,
    )


def _grid(
    base: RunConfig,
    shapes: list[tuple[int, int]],
    tokens: list[float],
    lr_rule: Rule,
    lr_factors: tuple[float, ...],
    *,
    batches: tuple[int, ...] | None = None,
    batch_factors: tuple[float, ...] = (),
    head_dim: int,
    evals: int,
    eval_seqs: int,
) -> list[RunConfig]:
    """Every shape × D × B × LR: B from `batches` (sequences) or as factors of Step Law's
    B_opt(D); the LRs as factors of lr_rule at each (N, D, B). Every run evaluates on the same
    `eval_seqs` windows whatever its batch, so small batches are not judged on noisier losses."""
    T = base.model.context_length
    out = []
    for D in tokens:
        if batches is not None:
            bss, note = batches, ""
        else:
            b_opt = StepLaw().batch(1.0, D, 1.0)
            bss = tuple(sorted({max(1, round(b_opt * f / T)) for f in batch_factors}))
            grid = ", ".join(f"{f:g}" for f in batch_factors)
            note = f"grid ×[{grid}] around {StepLaw().batch.describe()}"
        for bs in bss:
            tc = dataclasses.replace(
                base.train, batch_size=bs, batch_rule=note, eval_batches=-(-eval_seqs // bs)
            )
            out += lr_grid_runs(
                dataclasses.replace(base, train=tc),
                shapes,
                lr_factors,
                tokens=D,
                evals=evals,
                prefix=f"{NAME}_D{D:.2e}_B{bs * T}",
                lr_rule=lr_rule,
                head_dim=head_dim,
            )
    return out


# The points checked by the `quickstart` setting, from the quickstart's earlier grid: (budget,
# (width, depth)), two per budget, so N and D each vary over about a decade (N=25k at two D a
# decade apart).
QUICKSTART_POINTS = (
    (3e10, (16, 1)),
    (3e10, (32, 2)),
    (1e11, (16, 2)),
    (1e11, (48, 2)),
    (3e11, (32, 2)),
    (3e11, (64, 2)),
)


def _quickstart_check() -> list[RunConfig]:
    """7 LRs around LR_STUDY_TINY at 6 quickstart runs (same shapes, tokens, batch, context)."""
    base = RunConfig(
        model=ModelConfig(context_length=128, vocab_size=257),
        data=DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=8_000_000),
        train=TrainConfig(
            batch_size=4,
            warmup_steps=10,
            eval_batches=8,
            checkpoint_every=200,
            keep_checkpoints=1,
        ),
        name=NAME,
    )
    out = []
    for C, shape in QUICKSTART_POINTS:
        (iso,) = isoflop_plan(base, [C], [shape], convention=CONVENTION, head_dim=16, evals=4)
        D = iso.cfg.total_tokens
        out += lr_grid_runs(
            base,
            [shape],
            _octaves(-2, 4),
            tokens=D,
            evals=4,
            prefix=f"{NAME}_qs_D{D:.2e}",
            lr_rule=LR_STUDY_TINY,
            head_dim=16,
        )
    return out


def runs(setting: str = "default") -> list[RunConfig]:
    """The study's runs for `setting` ('default', 'tiny', 'quickstart' or 'large')."""
    if setting == "quickstart":
        return _quickstart_check()
    if setting == "tiny":
        stdlib = DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=8_000_000)
        base = _base(64, stdlib, warmup_steps=10, checkpoint_every=1000)
        return _grid(
            base,
            [(16, 1), (32, 1), (32, 2)],
            [2**15, 2**17],
            LR_BYTE_SMALL,
            tuple(2.0 ** (k + 0.5) for k in range(-2, 2)),
            batches=(2, 4, 8),
            head_dim=16,
            evals=2,
            eval_seqs=256,
        )
    # Real measurements want a corpus larger than the largest D (no repeated epochs): the byte
    # stdlib holds ~3e7 tokens. Replace with your own `tokens:PATH` for speed.
    web = DataConfig(corpus="hf:HuggingFaceFW/fineweb-edu:train:text", tokenizer="bpe:4096")
    if setting == "large":
        base = _base(2048, web, warmup_steps=500, checkpoint_every=2000)
        base = dataclasses.replace(base, model=dataclasses.replace(base.model, vocab_size=4096))
        return _grid(
            base,
            [(768, 12), (1024, 16), (1536, 16)],
            [2e9, 8e9, 3.2e10],
            StepLaw(),
            _octaves(-2, 2),
            batch_factors=_octaves(-1, 2),
            head_dim=64,
            evals=8,
            eval_seqs=512,
        )
    base = _base(1024, web, warmup_steps=200, checkpoint_every=2000)
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, vocab_size=4096))
    return _grid(
        base,
        [(256, 4), (384, 6), (512, 8)],
        [1e8, 4e8, 1.6e9],
        StepLaw(),
        _octaves(-3, 3),
        batch_factors=_octaves(-2, 2),
        head_dim=64,
        evals=8,
        eval_seqs=512,
    )
