"""One sizing rule: the same (base, width, depth) builds the same model through every entry point."""

from __future__ import annotations

import argparse
import dataclasses

from jaxscale.analysis import width_depth
from jaxscale.cli import app
from jaxscale.cli import flops as flops_cli
from jaxscale.config import ModelConfig, RunConfig
from jaxscale.runs import grids

# The example: a base of 4 heads x 16 with d_ff 128, resized to (128, 4).
BASE = RunConfig(model=ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128, context_length=32))
WIDTH, DEPTH = 128, 4


def _cli_train_model(tmp_path) -> ModelConfig:
    cfg_file = tmp_path / "base.json"
    cfg_file.write_text(
        '{"model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "context_length": 32}}'
    )
    args = argparse.Namespace(config=str(cfg_file), width=WIDTH, depth=DEPTH, set=[])
    return app.config_from_args(args, []).model


def test_every_entry_point_builds_the_same_model(tmp_path):
    expected = BASE.model.resized(WIDTH, DEPTH)
    assert (expected.n_heads, expected.head_dim, expected.d_ff) == (8, 16, 256)
    via_cli = _cli_train_model(tmp_path)
    via_flops = flops_cli._model_from_args(BASE, WIDTH, DEPTH).model
    via_grid = grids.nd_grid_runs(BASE, [(WIDTH, DEPTH)], [1e5], evals=None)[0].model
    plan = grids.isoflop_plan(BASE, [1e11], [(WIDTH, DEPTH)], min_steps=1, max_rel_error=1.0)
    via_isoflop = plan[0].cfg.model
    shapes = width_depth.feasible_shapes(
        BASE.model, expected.n_params_nonembedding, max_rel_dev=0.0
    )
    via_shape = next(
        s.model for s in shapes if (s.model.d_model, s.model.n_layers) == (WIDTH, DEPTH)
    )
    for got in (via_cli, via_flops, via_grid, via_isoflop, via_shape):
        assert got == expected


def test_resized_keeps_every_other_field():
    base = dataclasses.replace(BASE.model, norm="layernorm", position="learned", rope_base=500.0)
    m = base.resized(WIDTH, DEPTH)
    for f in dataclasses.fields(base):
        if f.name not in ("d_model", "n_layers", "n_heads", "d_ff"):
            assert getattr(m, f.name) == getattr(base, f.name), f.name
