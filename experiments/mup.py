"""μP and depth-μP LR transfer: the best peak LR per width (and depth) under SP and under μP.

    jaxscale sweep run experiments/mup.py --setting depth-1L    # -> results/mup-depth-1L
    jaxscale lr results/mup-depth-1L --transfer                 # optimum per depth, verdict

Settings (docs/hyperparameters.md, "μP and depth-μP"), each over nine peak LRs ×2 apart and
seeds 0-2, one parameterisation per setting (so per results directory: `jaxscale lr
--transfer` refuses a mix). Under μP (Yang et al. 2022) and 1/L residual scaling (CompleteP,
Dey et al. 2025) the base shape is the first width (depth), so one LR tuned there should serve
every shape; under SP the optimum moves. One shape's LRs × seeds share a vmapped step.

  width-sp / width-mup   CPU: widths 16-64 at depth 2 (head_dim 8), LRs 2^-11…2^-3, 100 steps
                         of 8 × 32 bytes of the built-in corpus, cosine with 10% warmup: the
                         design of tests/test_mup.py's transfer test (μP transfers, SP drifts).
  depth-sp / depth-1L    CPU: depths 2-8 at width 16, same LRs and steps. Measured: SP does not
                         drift here either (verdict TRANSFERS, 0.34 steps; 2:54 wall on 2
                         cores), so these cannot show what 1/L fixes.
  depth-sp-gpu /         GPU: width 256 (head_dim 64), depths 2, 8, 32 (base 2), LRs
  depth-1L-gpu           2^-12…2^-4, 2,000 steps of 32 × 1024 tokens (65.5M; BPE 4096 on
                         FineWeb-Edu), cosine with 5% warmup: Dey et al. 2025 Fig. 1's
                         question at 1/4 of their width, bfloat16 matmuls. 81 runs, 4.7e17
                         FLOPs per setting (kaplan_attn), about 1 A100-hour at 40% MFU.
                         Planned, never run here (no accelerator).
"""

from __future__ import annotations

import dataclasses

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import lr_grid_runs

NAME = "mup"
DESCRIPTION = "best peak LR across widths and depths under SP, μP and 1/L depth scaling"
SETTINGS = ("width-sp", "width-mup", "depth-sp", "depth-1L", "depth-sp-gpu", "depth-1L-gpu")
CONVENTION = "kaplan_attn"

BASE_WIDTH, BASE_DEPTH, HEAD_DIM = 16, 2, 8
WIDTHS = (16, 32, 64)
DEPTHS = (2, 4, 8)
LRS = [2.0**k for k in range(-11, -2)]
SEEDS = (0, 1, 2)
STEPS, BATCH, CONTEXT = 100, 8, 32


def runs(setting: str = "width-mup") -> list[RunConfig]:
    """Nine peak LRs × three seeds at each width (or depth) of one parameterisation
    ("default": width-mup)."""
    setting = "width-mup" if setting == "default" else setting
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {SETTINGS}")
    axis, param, *gpu = setting.split("-")
    if gpu:
        return _depth_gpu(param)
    kw: dict = {}
    if param == "mup":
        kw = {"parameterization": "mup", "base_width": BASE_WIDTH}
    elif param == "1L":
        kw = {"depth_scaling": "1/L", "base_depth": BASE_DEPTH}
    model = ModelConfig.from_width_depth(
        BASE_WIDTH, BASE_DEPTH, head_dim=HEAD_DIM, context_length=CONTEXT, vocab_size=257, **kw
    )
    shapes = (
        [(w, BASE_DEPTH) for w in WIDTHS] if axis == "width" else [(BASE_WIDTH, d) for d in DEPTHS]
    )
    data = DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=1_000_000)
    train = TrainConfig(
        batch_size=BATCH,
        steps=STEPS,
        warmup_steps=STEPS // 10,
        eval_batches=2,
        checkpoint_every=STEPS,
        keep_checkpoints=1,
    )
    return _seeded(RunConfig(model=model, data=data, train=train, name=NAME), setting, shapes, LRS)


def _seeded(base: RunConfig, setting: str, shapes: list, lrs: list[float]) -> list[RunConfig]:
    out = []
    for seed in SEEDS:
        cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
        prefix = f"{NAME}_{setting}_s{seed}"
        head_dim = base.model.d_model // base.model.n_heads
        out += lr_grid_runs(cfg, shapes, lrs, evals=1, prefix=prefix, head_dim=head_dim)
    return out


def _depth_gpu(param: str) -> list[RunConfig]:
    """Width 256, depths 2/8/32, 2,000 steps of 32 × 1024 BPE tokens of FineWeb-Edu."""
    kw = {"depth_scaling": "1/L", "base_depth": 2} if param == "1L" else {}
    model = ModelConfig.from_width_depth(
        256,
        2,
        head_dim=64,
        context_length=1024,
        vocab_size=4096,
        compute_dtype="bfloat16",
        **kw,
    )
    # A corpus larger than the 65.5M tokens a run reads, so no run repeats an epoch.
    data = DataConfig(corpus="hf:HuggingFaceFW/fineweb-edu:train:text", tokenizer="bpe:4096")
    train = TrainConfig(
        batch_size=32,
        steps=2000,
        warmup_steps=100,
        eval_batches=16,
        checkpoint_every=1000,
        keep_checkpoints=1,
    )
    base = RunConfig(model=model, data=data, train=train, name=NAME)
    lrs = [2.0**k for k in range(-12, -3)]
    return _seeded(base, f"depth-{param}-gpu", [(256, d) for d in (2, 8, 32)], lrs)
