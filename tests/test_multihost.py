"""Two local processes with jax.distributed train the same as one process on the same batch."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jaxscale.config import MeshConfig
from jaxscale.core import train
from jaxscale.runs import store
from jaxscale.runs.rundir import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from _multihost_worker import config  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    worker = Path(__file__).with_name("_multihost_worker.py")
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(i), port, str(tmp_path / "multi")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
        assert "STATUS done" in o
    ref = train.train(
        config(MeshConfig(spec="data=1")), RunDir(tmp_path / "single"), progress=False
    )
    multi = store.read_jsonl(tmp_path / "multi" / "metrics.jsonl")
    single = store.read_jsonl(tmp_path / "single" / "metrics.jsonl")
    assert [r["step"] for r in multi] == [r["step"] for r in single] == list(range(1, 7))
    for a, b in zip(multi, single):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-5)
    assert store.read_json(tmp_path / "multi" / "summary.json")["loss"] == pytest.approx(
        ref["loss"], abs=2e-5
    )
