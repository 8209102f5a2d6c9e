"""One command for every benchmark: `python -m benchmarks` (or `python benchmarks/run.py`).

Every speed figure is a ratio taken inside this process: MFU against a matmul peak measured
between the timed rounds, JAX vs PyTorch and grouped vs sequential as interleaved A B A B rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as C  # noqa: E402


def _row(name: str, value: float, unit: str, note: str = "") -> dict:
    return {"name": name, "value": value, "unit": unit, "note": note}


def _peak_stepper(dtype: str = "float32", n: int = 2048) -> C.Stepper:
    """A matmul 'contender' timed in the same rounds, so MFU divides like by like."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()

    def run(k: int) -> None:
        for _ in range(k):
            out = mm(a, a)
        out.block_until_ready()

    return C.Stepper(f"matmul{n}", run)


def bench_step(sizes, dtypes, rounds: int) -> list[dict]:
    """Train-step tokens/s, MFU (exact FLOPs / peak measured in the same rounds), compile time."""
    from jaxscale.core import flops

    rows = []
    for dtype in dtypes:
        peak = _peak_stepper(dtype)
        for size in sizes:
            cfg = C.run_config(size, dtype)
            t_cpu = time.process_time()
            s = C.jax_stepper(f"{size}-{dtype}", cfg)
            t_cpu = time.process_time() - t_cpu
            times = C.interleave([s, peak], rounds, 1)
            tok = cfg.tokens_per_step
            fpt = flops.flops_per_token(cfg.model, "exact")
            mfus = [
                (tok / ts) * fpt / (2 * 2048**3 / tp)
                for ts, tp in zip(times[s.name], times[peak.name])
            ]
            n = cfg.model.n_params / 1e6
            gf = 2 * 2048**3 / min(times[peak.name]) / 1e9
            note = f"N={n:.2f}M, {rounds} rounds, peak {gf:.0f} GFLOP/s"
            rows += [
                _row(
                    f"step {size} {dtype} tokens/s",
                    tok / statistics.median(times[s.name]),
                    "tok/s",
                    note,
                ),
                _row(
                    f"step {size} {dtype} MFU",
                    statistics.median(mfus),
                    "frac",
                    "exact FLOPs / in-round matmul peak",
                ),
                _row(
                    f"step {size} {dtype} compile",
                    s.compile_s,
                    "s",
                    f"lower+compile wall ({s.compile_cpu_s:.1f} s CPU); setup+compile CPU "
                    f"{t_cpu:.1f} s",
                ),
            ]
            _print(rows[-3:])
    return rows


def bench_torch(sizes, rounds: int) -> list[dict]:
    """jaxscale step vs the same GPT in PyTorch eager (AdamW, f32, threads = cores), A B A B."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return [_row("jax/torch", math.nan, "x", "torch not installed: pip install torch==2.13.0")]
    rows = []
    peak = _peak_stepper()
    for size in sizes:
        cfg = C.run_config(size)
        a, b = C.jax_stepper("jax", cfg), C.torch_stepper("torch", cfg)
        # The matmul peak in the same rounds: how loaded the machine was while the pair ran.
        times = C.interleave([a, b, peak], rounds, 1)
        tok = cfg.tokens_per_step
        torch_tps = tok / statistics.median(times["torch"])
        gf = [2 * 2048**3 / t / 1e9 for t in times[peak.name]]
        note = (
            f"{rounds} interleaved rounds; jax {tok / statistics.median(times['jax']):.0f}, "
            f"torch {torch_tps:.0f} tok/s; matmul peak {min(gf):.0f}-{max(gf):.0f} GFLOP/s; "
            f"jax compile {a.compile_s:.1f} s wall, {a.compile_cpu_s:.1f} s CPU"
        )
        cpu_note = "process CPU s per step, torch/jax (work, less load-sensitive than wall)"
        rows += [
            _row(
                f"jax/torch {size} f32 speed",
                C.paired_ratio(times["jax"], times["torch"]),
                "x",
                note,
            ),
            _row(
                f"jax/torch {size} f32 CPU",
                C.paired_ratio(times["jax cpu"], times["torch cpu"]),
                "x",
                cpu_note,
            ),
        ]
        _print(rows[-2:])
    return rows


def bench_multi(rounds: int, K: int = 8) -> list[dict]:
    """K models in one vmapped step vs the same K steps one model at a time, A B A B."""
    from jaxscale.config import ModelConfig, RunConfig, TrainConfig

    shapes = {
        # the quickstart sweep's tiny runs (context 64, batch 4) and the ~1M benchmark model
        "tiny": RunConfig(
            model=ModelConfig(d_model=32, n_layers=2, n_heads=1, d_ff=128, context_length=64),
            train=TrainConfig(batch_size=4, steps=1000),
        ),
        "1M": C.run_config("1M"),
    }
    rows = [_multi_one(name, base, K, rounds) for name, base in shapes.items()]
    return rows + [_multi_sweep(shapes["tiny"], K, max(1, rounds // 2))]


def _multi_sweep(base, K: int, rounds: int, steps: int = 100) -> dict:
    """End to end, as a sweep runs them: train_group(K runs) vs train.train K times in turn
    (each run sets up and compiles its own step, loads data, evaluates, checkpoints)."""
    import shutil
    import tempfile

    from jaxscale.core import train
    from jaxscale.runs.rundir import RunDir

    tc = dict(steps=steps, warmup_steps=10, eval_every=50, checkpoint_every=steps)
    cfgs = [
        base.replace(
            **{
                "train.seed": i,
                "train.lr": 1e-3 * (1 + i),
                **{f"train.{k}": v for k, v in tc.items()},
            }
        )
        for i in range(K)
    ]
    root = Path(tempfile.mkdtemp(prefix="jaxscale-bench-"))
    counter = iter(range(10**6))

    def dirs() -> list[RunDir]:
        i = next(counter)
        return [RunDir(root / f"{i}-{k}") for k in range(K)]

    def grp(n: int) -> None:
        train.train_group(cfgs, dirs(), progress=False)

    def seq(n: int) -> None:
        for c, d in zip(cfgs, dirs()):
            train.train(c, d, progress=False)

    try:
        times = C.interleave([C.Stepper("group", grp), C.Stepper("sequential", seq)], rounds, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    note = (
        f"{K} runs x {steps} steps, end to end in one process; group "
        f"{statistics.median(times['group']):.1f} s, sequential "
        f"{statistics.median(times['sequential']):.1f} s"
    )
    row = _row(
        f"multi sweep tiny x{K} vs sequential",
        C.paired_ratio(times["group"], times["sequential"]),
        "x",
        note,
    )
    _print([row])
    return row


def _multi_one(name: str, base, K: int, rounds: int) -> dict:
    import jax
    import numpy as np

    from jaxscale.core import train

    cfgs = [base.replace(**{"train.seed": i, "train.lr": 1e-3 * (1 + i)}) for i in range(K)]
    tc, mc = base.train, base.model
    shape = (1, tc.batch_size, mc.context_length + 1)
    batches = [jax.random.randint(jax.random.key(i), shape, 0, 257) for i in range(K)]
    s = train.setup(base)
    states = [train.setup(c).init_fn() for c in cfgs]
    step = s.step_jit.lower(states[0], batches[0], s.numbers).compile()
    box = {"states": states}

    def seq(n: int) -> None:
        sts = box["states"]
        for _ in range(n):
            sts = [step(st, b, s.numbers)[0] for st, b in zip(sts, batches)]
        jax.block_until_ready(sts)
        box["states"] = sts

    g = train.setup_group(cfgs)
    gstate = train.init_group(g, cfgs)
    gbatch = jax.device_put(np.stack([np.asarray(b) for b in batches]), g.batch_sharding)
    active = np.ones(K, bool)
    gstep = g.step_fn  # compiled by the warm-up call below
    gbox = {"state": gstate}

    def grp(n: int) -> None:
        st = gbox["state"]
        for _ in range(n):
            st, _m = gstep(st, gbatch, active)
        jax.block_until_ready(st)
        gbox["state"] = st

    seq(1), grp(1)
    n = 20 if name == "tiny" else 1
    times = C.interleave([C.Stepper("group", grp), C.Stepper("sequential", seq)], rounds, n)
    note = (
        f"{K} models x N={mc.n_params / 1e6:.2f}M, B={tc.batch_size}, T={mc.context_length}; "
        f"group step {statistics.median(times['group']) * 1e3:.1f} ms"
    )
    row = _row(
        f"multi {name} x{K} vs sequential",
        C.paired_ratio(times["group"], times["sequential"]),
        "x",
        note,
    )
    _print([row])
    return row


def bench_fit_rows() -> list[dict]:
    try:
        from benchmarks.bench_fit import bench_fit
    except ImportError as e:
        return [_row("fit", math.nan, "-", f"benchmarks/bench_fit.py unavailable: {e}")]
    return bench_fit()


def _fmt(v: float) -> str:
    if not isinstance(v, (int, float)) or math.isnan(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _print(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['name']:<36} {_fmt(r['value']):>10} {r['unit']:<6} {r['note']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--only", default="step,torch,multi,fit", help="comma list of sections")
    p.add_argument("--sizes", default="1M,5M,20M")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--torch-sizes", default="1M,20M")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json", type=Path, help="also write rows + machine info here")
    a = p.parse_args(argv)
    only = set(a.only.split(","))
    info = C.machine()
    print(" | ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    print(f"{'benchmark':<36} {'value':>10} {'unit':<6} note")
    rows: list[dict] = []
    if "step" in only:
        rows += bench_step(a.sizes.split(","), a.dtypes.split(","), a.rounds)
    if "torch" in only:
        rows += bench_torch(a.torch_sizes.split(","), a.rounds)
    if "multi" in only:
        rows += bench_multi(a.rounds)
    if "fit" in only:
        fit_rows = bench_fit_rows()
        _print(fit_rows)
        rows += fit_rows
    info["load_avg_1m_end"] = C.machine().get("load_avg_1m")
    if a.json:
        a.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
