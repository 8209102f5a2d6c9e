"""Width versus depth: loss vs aspect ratio d_model/n_layers at fixed non-embedding N
(Kaplan et al. 2020, Fig. 5), on byte-level stdlib source.

    jaxscale sweep run experiments/shape.py              # 3 N levels x 7 shapes, ~5 h on 2 cores
    jaxscale shape results/shape                         # r*(N), penalties, drift, plot

Settings:
  default  N = 1.5e5, 4e5, 1e6; 7 shapes per level spanning 2 decades of aspect ratio, centred
           on r = 50 but shifted to end at the 1-layer shape: r = 1.1-112 (22 x 24 to 1 x 112),
           1.9-184 (21 x 40 to 1 x 184), 3.2-288 (20 x 64 to 1 x 288); fixed head_dim 8, 4x GELU
           MLP; each trained on 20 tokens per parameter (Hoffmann 2022).
  compute  the same grid at fixed training compute per level (kaplan_attn FLOPs): deep, narrow
           shapes pay more attention FLOPs per token and so see fewer tokens.
  tiny     one level N = 8e4, 5 shapes from (11 layers x 24) to (1 x 80) (1.5 decades), 20 steps;
           a smoke test of the pipeline (under a minute on an idle 2-core CPU), not a measurement:

    jaxscale sweep run experiments/shape.py --setting tiny   # -> results/shape-tiny
    jaxscale shape results/shape-tiny --method laplace
"""

from __future__ import annotations

from jaxscale.analysis.width_depth import shape_runs
from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig

NAME = "shape"
DESCRIPTION = "loss vs aspect ratio at fixed non-embedding N (Kaplan 2020 Fig. 5)"
SETTINGS = ("default", "compute", "tiny")
CONVENTION = "kaplan_attn"

LEVELS = (1.5e5, 4e5, 1e6)
TINY_LEVELS = (8e4,)


def runs(setting: str = "default") -> list[RunConfig]:
    """The study's runs for `setting` ('default', 'compute' or 'tiny')."""
    tiny = setting == "tiny"
    base = RunConfig(
        model=ModelConfig(context_length=64 if tiny else 128, vocab_size=257),
        data=DataConfig(corpus="stdlib", tokenizer="byte", max_bytes=8_000_000),
        train=TrainConfig(
            batch_size=4 if tiny else 16,
            steps=20 if tiny else 1000,
            lr=3e-3 if tiny else 2e-3,
            warmup_steps=5 if tiny else 50,
            eval_batches=2 if tiny else 8,
            checkpoint_every=1000 if tiny else 500,
            keep_checkpoints=1,
        ),
        name=NAME,
    )
    if tiny:
        return shape_runs(
            base,
            TINY_LEVELS,
            head_dim=8,
            n_shapes=5,
            aspect_range=(2, 80),
            max_rel_dev=0.06,
            min_span_decades=1.5,
            evals=2,
            prefix=NAME,
        )
    return shape_runs(
        base,
        LEVELS,
        tokens_per_param=20,
        budget="compute" if setting == "compute" else "tokens",
        convention=CONVENTION,
        head_dim=8,
        n_shapes=7,
        span_decades=2.0,
        max_rel_dev=0.06,
        evals=8,
        prefix=NAME,
    )
