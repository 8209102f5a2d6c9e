"""K models in one vmapped step equal K single runs; divergence and resume stay per model."""

import math
import shutil

import numpy as np
import pytest

from jaxscale.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import train
from jaxscale.runs import store
from jaxscale.runs.rundir import RunDir

DATA = DataConfig(max_bytes=2_000_000)


def _cfg(seed=0, lr=1e-2, steps=20, **train_kw):
    return RunConfig(
        model=ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, context_length=32),
        data=DATA,
        train=TrainConfig(
            batch_size=8,
            steps=steps,
            warmup_steps=3,
            lr=lr,
            seed=seed,
            eval_every=10,
            checkpoint_every=10,
            **train_kw,
        ),
        name=f"s{seed}-lr{lr}",
    )


def test_compatible_allows_only_seed_and_lr_to_differ():
    a = _cfg()
    assert train.compatible(a, _cfg(seed=3, lr=1e-3))
    assert not train.compatible(a, a.replace(**{"model.d_model": 64}))
    assert not train.compatible(a, a.replace(**{"train.steps": 21}))
    assert not train.compatible(a, a.replace(**{"train.batch_size": 16}))
    assert not train.compatible(a, a.replace(**{"train.schedule": "wsd"}))
    assert not train.compatible(a, a.replace(**{"data.split_seed": 1}))
    with pytest.raises(ConfigError, match="differs from config 0"):
        train.train_group(
            [a, a.replace(**{"train.steps": 21})], [RunDir("/tmp/x1"), RunDir("/tmp/x2")]
        )
    with pytest.raises(ConfigError, match="one directory per config"):
        train.train_group([a], [])


def _rows(d):
    return store.read_jsonl(d / "metrics.jsonl")


# Wall-clock columns differ between any two runs; a resumed run must match in every other one.
WALL_CLOCK = ("tokens_per_s", "mfu", "time")


def _columns(rows):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def test_group_equals_single_runs_and_resumes_exactly(tmp_path):
    # With the gradient noise scale, whose EMA lives on the host and must be checkpointed too.
    cfgs = [_cfg(s, lr, grad_accum=2, gns=True) for s, lr in ((0, 1e-2), (1, 3e-3), (2, 1e-2))]
    dirs = [tmp_path / f"g{i}" for i in range(3)]
    out = train.train_group(cfgs, [RunDir(d) for d in dirs], progress=False)
    assert [s["status"] for s in out] == ["done"] * 3 and all(s["group_size"] == 3 for s in out)
    for c, d, s in zip(cfgs, dirs, out):
        single = train.train(c, RunDir(tmp_path / f"single-{c.name}"), progress=False)
        got, want = _rows(d), _rows(tmp_path / f"single-{c.name}")
        assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 21))
        # Not bit-for-bit: the vmapped step batches each matmul over K models, so XLA:CPU
        # picks other kernels and summation orders; differences stay at float32 rounding.
        np.testing.assert_allclose(
            [r["loss"] for r in got], [r["loss"] for r in want], rtol=2e-5, atol=0
        )
        np.testing.assert_allclose(s["loss"], single["loss"], rtol=2e-5)
        assert (d / "config.json").exists() and store.read_json(d / "summary.json") == s
        assert sorted(p.name for p in (d / "checkpoints").glob("[0-9]*")) == ["10", "20"]
    # The three models really differ (seeds, LRs), so equality above is not vacuous.
    assert len({round(s["loss"], 6) for s in out}) == 3

    # Resume: lose the last checkpoint of run 1 and every summary, then rerun the group.
    before = [_rows(d) for d in dirs]
    shutil.rmtree(dirs[1] / "checkpoints" / "20")
    for d in dirs:
        (d / "summary.json").unlink()
    again = train.train_group(cfgs, [RunDir(d) for d in dirs], progress=False)
    assert [s["status"] for s in again] == ["done"] * 3
    rows1 = _rows(dirs[1])
    assert [r["step"] for r in rows1] == list(range(1, 21))
    # Every column but the wall-clock ones, bit for bit (NaN equals NaN: early GNS rows).
    assert "gns_b_simple" in rows1[-1]
    np.testing.assert_equal(_columns(rows1), _columns(before[1]))
    assert again[0]["steps"] == 20 and _rows(dirs[0]) == before[0]


def test_one_diverging_model_is_masked_and_others_unchanged(tmp_path):
    good, bad = _cfg(0, 1e-2, grad_clip=0.0), _cfg(1, 1e4, grad_clip=0.0)
    bad = bad.replace(**{"train.warmup_steps": 3})
    out = train.train_group(
        [good, bad], [RunDir(tmp_path / "good"), RunDir(tmp_path / "bad")], progress=False
    )
    assert out[0]["status"] == "done" and out[1]["status"] == "diverged"
    assert "non-finite" in out[1]["error"] and out[1]["steps"] < 20
    bad_rows = _rows(tmp_path / "bad")
    assert bad_rows and not math.isfinite(bad_rows[-1]["loss"])
    alone = train.train(good, RunDir(tmp_path / "alone"), progress=False)
    np.testing.assert_allclose(out[0]["loss"], alone["loss"], rtol=2e-5)
    assert all(math.isfinite(r["loss"]) for r in _rows(tmp_path / "good"))


def test_group_of_one_is_the_single_run_bit_for_bit(tmp_path):
    c = _cfg(steps=10)
    (g,) = train.train_group([c], [RunDir(tmp_path / "g")], progress=False)
    s = train.train(c, RunDir(tmp_path / "s"), progress=False)
    assert g["group_size"] == 1 and "group_size" not in s
    # K = 1 runs the single model's own step, so nothing differs but timings.
    key = lambda r: (r["step"], r["loss"], r["grad_norm"], r["lr"], r.get("eval_loss"))
    assert [key(r) for r in _rows(tmp_path / "g")] == [key(r) for r in _rows(tmp_path / "s")]
    assert (g["loss"], g["train_loss"], g["steps"]) == (s["loss"], s["train_loss"], s["steps"])
