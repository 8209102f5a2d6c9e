"""One process of a two-process jax.distributed CPU run (used by test_multihost.py)."""

import sys

from jaxscale.config import DataConfig, MeshConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import train
from jaxscale.runs.rundir import RunDir


def config(mesh: MeshConfig) -> RunConfig:
    return RunConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=32),
        data=DataConfig(max_bytes=400_000),
        train=TrainConfig(batch_size=8, steps=6, warmup_steps=0, eval_every=3, checkpoint_every=3),
        mesh=mesh,
    )


if __name__ == "__main__":
    pid, port, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    mesh = MeshConfig(
        spec="data=-1",
        distributed=True,
        coordinator=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=pid,
    )
    s = train.train(config(mesh), RunDir(run_dir), progress=False)
    print("STATUS", s["status"], s["loss"])
