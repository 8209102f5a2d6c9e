"""Model properties: causality, parameter counts, config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxscale.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)
from jaxscale.core import model


def _closed_form_params(
    d, L, ff, V, *, swiglu=False, layernorm=False, tied=True, learned=False, T=0
):
    """Hand-written count: 4d^2 attention + (2|3)·d·ff MLP + norms per layer (Kaplan 2020 §2.1)."""
    norm = 2 * d if layernorm else d
    per_layer = 4 * d * d + (3 if swiglu else 2) * d * ff + 2 * norm
    non_embed = L * per_layer + norm
    embed = V * d + (0 if tied else d * V) + (T * d if learned else 0)
    return non_embed, embed


@pytest.mark.parametrize(
    "width,depth,kw",
    [
        (64, 2, {}),
        (128, 3, {"activation": "swiglu"}),
        (96, 4, {"norm": "layernorm", "tie_embeddings": False}),
        (64, 1, {"position": "learned", "context_length": 32}),
    ],
)
def test_param_counts_match_closed_form_and_model(width, depth, kw):
    cfg = ModelConfig.from_width_depth(width, depth, head_dim=32, **kw)
    ne, e = _closed_form_params(
        width,
        depth,
        cfg.d_ff,
        cfg.padded_vocab,
        swiglu=kw.get("activation") == "swiglu",
        layernorm=kw.get("norm") == "layernorm",
        tied=kw.get("tie_embeddings", True),
        learned=kw.get("position") == "learned",
        T=cfg.context_length,
    )
    assert cfg.n_params_nonembedding == ne
    assert cfg.n_params_embedding == e
    _, state = jax.eval_shape(lambda: model.init_state(cfg, 0))
    n_model = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.to_pure_dict(state)))
    assert n_model == cfg.n_params == ne + e


def test_from_width_depth_rules():
    g = ModelConfig.from_width_depth(256, 4)
    assert (g.n_heads, g.head_dim, g.d_ff) == (4, 64, 1024)
    s = ModelConfig.from_width_depth(256, 4, activation="swiglu")
    assert s.d_ff % 8 == 0 and abs(3 * s.d_ff - 2 * 1024) <= 24  # same MLP params as GELU
    narrow = ModelConfig.from_width_depth(32, 2)
    assert narrow.n_heads == 1 and narrow.head_dim == 32


@pytest.mark.parametrize("kw", [{}, {"position": "learned"}, {"scan_layers": False}])
def test_causality(kw):
    cfg = ModelConfig.from_width_depth(64, 2, head_dim=16, context_length=32, **kw)
    gd, st = model.init_state(cfg, 0)
    m = nnx.merge(gd, st)
    tok = jax.random.randint(jax.random.key(1), (2, 32), 0, 257)
    t = 13
    tok2 = tok.at[:, t + 1 :].set((tok[:, t + 1 :] + 7) % 257)
    a, b = m(tok), m(tok2)
    np.testing.assert_array_equal(np.asarray(a[:, : t + 1]), np.asarray(b[:, : t + 1]))
    assert not np.allclose(np.asarray(a[:, t + 1 :]), np.asarray(b[:, t + 1 :]))


def test_scan_equals_unrolled():
    base = ModelConfig.from_width_depth(64, 3, head_dim=16, context_length=16)
    unrolled = ModelConfig(**{**base.__dict__, "scan_layers": False})
    tok = jax.random.randint(jax.random.key(2), (2, 16), 0, 257)
    outs = []
    for cfg in (base, unrolled):
        gd, st = model.init_state(cfg, 0)
        outs.append(np.asarray(nnx.merge(gd, st)(tok)))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_every_param_has_logical_axes():
    cfg = ModelConfig.from_width_depth(
        64, 2, head_dim=32, activation="swiglu", tie_embeddings=False
    )
    _, st = jax.eval_shape(lambda: model.init_state(cfg, 0))
    names = jax.tree.leaves(model.logical_axes(st), is_leaf=lambda x: isinstance(x, tuple))
    shapes = jax.tree.leaves(nnx.to_pure_dict(st))
    assert len(names) == len(shapes)
    for n, s in zip(names, shapes):
        assert len(n) == len(s.shape) and any(x is not None for x in n)


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"d_model": 100, "n_heads": 3}, "n_heads"),
        ({"d_model": 0}, "d_model"),
        ({"activation": "relu2"}, "activation"),
        ({"norm": "batchnorm"}, "norm"),
        ({"n_layers": -1}, "n_layers"),
        ({"compute_dtype": "float16"}, "compute_dtype"),
    ],
)
def test_invalid_model_config_names_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kw)


def test_unknown_key_suggests_close_match(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'd_model'"):
        apply_overrides(RunConfig(), {"model.d_modle": 3})
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        apply_overrides(RunConfig(), {"train.lrr": 3})
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(RunConfig(), {"model.d_model": "wide"})
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  d_model: 64\n  n_heads: 2\ntrain:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_config(p)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_run_id_stable_and_sensitive():
    a = RunConfig()
    assert a.run_id() == RunConfig().run_id()
    assert a.run_id() != a.replace(**{"train.lr": 1e-4}).run_id()
    assert a.run_id() == a.replace(name="other").run_id()


def test_bf16_compute_runs():
    cfg = ModelConfig.from_width_depth(
        64, 1, head_dim=32, compute_dtype="bfloat16", context_length=8
    )
    gd, st = model.init_state(cfg, 0)
    out = nnx.merge(gd, st)(jnp.zeros((1, 8), jnp.int32))
    assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()


def test_run_id_same_for_int_and_float_values():
    a = RunConfig(train=TrainConfig(min_lr_ratio=0, grad_clip=0, weight_decay=0))
    b = RunConfig(train=TrainConfig(min_lr_ratio=0.0, grad_clip=0.0, weight_decay=0.0))
    assert a.run_id() == b.run_id() == RunConfig.from_dict(a.to_dict()).run_id()
    assert isinstance(a.train.grad_clip, float)
