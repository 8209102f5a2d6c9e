"""μP and depth-μP LR transfer: the best peak LR per width (and depth) under SP and under μP.

    jaxscale sweep run experiments/mup.py --setting width-mup    # -> results/mup-width-mup
    jaxscale lr results/mup-width-mup                           # best LR per size (= width)

Settings (docs/hyperparameters.md, "μP and depth-μP"): `width-sp` / `width-mup` train widths
16-64 at depth 2, `depth-sp` / `depth-1L` depths 2-8 at width 16 (head_dim 8), each over the
same nine peak LRs 2^-11…2^-3 (×2 apart) and seeds 0-2, 100 steps of 8 × 32 bytes of the
built-in corpus, cosine with 10% warmup: the design of tests/test_mup.py's transfer tests.
Under μP (Yang et al. 2022) and 1/L residual scaling (CompleteP, Dey et al. 2025) the base
shape is width 16, depth 2, so one LR tuned there should serve every size; under SP the
optimum moves. Each setting writes its own results directory, so `jaxscale lr` (which groups
runs by N and batch) never mixes parameterisations. One size's LRs × seeds share a vmapped step.
"""

from __future__ import annotations

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import lr_grid_runs

NAME = "mup"
DESCRIPTION = "best peak LR across widths and depths under SP, μP and 1/L depth scaling"
SETTINGS = ("width-sp", "width-mup", "depth-sp", "depth-1L")
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
    axis, param = setting.split("-")
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
    out = []
    for seed in SEEDS:
        base = RunConfig(
            model=model,
            data=DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=1_000_000),
            train=TrainConfig(
                batch_size=BATCH,
                steps=STEPS,
                warmup_steps=STEPS // 10,
                eval_batches=2,
                checkpoint_every=STEPS,
                keep_checkpoints=1,
                seed=seed,
            ),
            name=NAME,
        )
        prefix = f"{NAME}_{setting}_s{seed}"
        out += lr_grid_runs(base, shapes, LRS, evals=1, prefix=prefix, head_dim=HEAD_DIM)
    return out
