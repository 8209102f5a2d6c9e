"""Shared pieces of the benchmarks: model sizes, steppers, interleaved timing, reference data."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # the repository's reference data

SIZES = {
    # name: (d_model, n_layers, n_heads, d_ff); context 256, byte vocab, batch 16.
    "1M": (128, 6, 4, 512),
    "5M": (256, 6, 4, 1024),
    "20M": (512, 6, 8, 2048),
}
BATCH, CONTEXT = 16, 256


def model_config(size: str, dtype: str = "float32", **kw):
    from jaxscale.config import ModelConfig

    d, L, n, f = SIZES[size]
    return ModelConfig(
        d_model=d,
        n_layers=L,
        n_heads=n,
        d_ff=f,
        vocab_size=257,
        context_length=CONTEXT,
        compute_dtype=dtype,
        **kw,
    )


def run_config(size: str, dtype: str = "float32", steps: int = 1000, **kw):
    from jaxscale.config import RunConfig, TrainConfig

    return RunConfig(
        model=model_config(size, dtype, **kw), train=TrainConfig(batch_size=BATCH, steps=steps)
    )


@dataclass
class Stepper:
    """One benchmark contender: `run(n)` does n training steps and blocks until done."""

    name: str
    run: Callable[[int], None]
    compile_s: float = float("nan")
    compile_cpu_s: float = float("nan")  # this process's CPU seconds (XLA compiles on threads)


def jax_stepper(name: str, cfg, *, blocked: bool | None = None) -> Stepper:
    """The real jaxscale step (train.setup) on a fixed random batch; compile timed separately."""
    import jax

    from jaxscale.core import kernels, train

    orig = kernels.use_blocked_attention
    if blocked is not None:
        kernels.use_blocked_attention = lambda: blocked
    try:
        s = train.setup(cfg)
        state = s.init_fn()
        batch = jax.random.randint(
            jax.random.key(0), (1, cfg.train.batch_size, cfg.model.context_length + 1), 0, 257
        )
        t0, c0 = time.perf_counter(), time.process_time()
        compiled = s.step_jit.lower(state, batch, s.numbers).compile()
        compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    finally:
        kernels.use_blocked_attention = orig
    box = {"state": state}

    def run(n: int) -> None:
        st = box["state"]
        for _ in range(n):
            st, m = compiled(st, batch, s.numbers)  # no host sync inside the loop
        jax.block_until_ready((st, m))
        box["state"] = st

    run(1)  # warm-up
    return Stepper(name, run, compile_s, compile_cpu_s)


def torch_stepper(name: str, cfg) -> Stepper:
    import torch

    from benchmarks.torch_gpt import make_step

    torch.set_num_threads(os.cpu_count() or 1)
    _, step = make_step(cfg.model, cfg.train)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 257, (cfg.train.batch_size, cfg.model.context_length + 1), generator=g)

    def run(n: int) -> None:
        for _ in range(n):
            loss = step(batch)
        loss.item()

    run(1)
    return Stepper(name, run, float("nan"))


def interleave(steppers: list[Stepper], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each contender, A B A B ... so machine noise hits all alike; also
    this process's CPU seconds per step under "<name> cpu" (work done, whatever the load)."""
    out: dict[str, list[float]] = {}
    for s in steppers:
        out[s.name], out[f"{s.name} cpu"] = [], []
    for _ in range(rounds):
        for s in steppers:
            t0, c0 = time.perf_counter(), time.process_time()
            s.run(steps)
            out[s.name].append((time.perf_counter() - t0) / steps)
            out[f"{s.name} cpu"].append((time.process_time() - c0) / steps)
    return out


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of time(b)/time(a): > 1 means a is faster (speed ratio a/b)."""
    return statistics.median(tb / ta for ta, tb in zip(a, b))


def machine() -> dict:
    import jax

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        info["load_avg_1m"] = round(os.getloadavg()[0], 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info
