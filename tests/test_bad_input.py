"""Bad input gets one line naming the problem and the fix, exit code 2, and nothing written."""

from __future__ import annotations

import re

import numpy as np
import pytest

from jaxscale.cli import main
from jaxscale.config import DataConfig
from jaxscale.core import data

BAD_OVERRIDES = [
    ("--train.beta1=nan", "TrainConfig.beta1: must be a finite number"),
    ("--model.rope_base=nan", "ModelConfig.rope_base: must be a finite number"),
    ("--train.lr=inf", "TrainConfig.lr: must be a finite number"),
    ("--train.beta2=1.5", r"TrainConfig.beta2: must be in \[0, 1\)"),
    ("--train.eps=-1", "TrainConfig.eps: must be > 0"),
    ("--train.seed=3000000000", r"TrainConfig.seed: must be in \[0, 2\*\*31\)"),
    ("--train.steps=10", "set train.warmup_steps to at most 10"),
    ("--model.n_heads=7", "ModelConfig.n_heads"),
    ("--train.lrr=1e-3", "did you mean 'lr'"),
]


@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES)
def test_bad_config_value_is_one_line_exit_2_and_writes_nothing(
    tmp_path, capsys, override, message
):
    run_dir = tmp_path / "run"
    code = main(["train", "--run-dir", str(run_dir), "--no-progress", override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("jaxscale: error: ")
    assert re.search(message, err), err
    assert not run_dir.exists()


def test_uint32_token_file_read_as_uint16_is_refused(tmp_path, capsys):
    ids = np.random.default_rng(0).integers(1, 256, 4096).astype(np.uint32)
    path = tmp_path / "toks.bin"
    ids.tofile(path)
    run_dir = tmp_path / "run"
    code = main(
        ["train", "--run-dir", str(run_dir), "--no-progress", f"--data.corpus=tokens:{path}"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "set data.token_dtype=uint32" in err and len(err.splitlines()) == 1
    assert not (run_dir / "metrics.jsonl").exists()


def test_uint16_token_file_read_as_uint32_names_the_dtype(tmp_path):
    ids = np.random.default_rng(0).integers(1, 256, 4096).astype(np.uint16)
    path = tmp_path / "toks.bin"
    ids.tofile(path)
    with pytest.raises(ValueError, match="check data.token_dtype"):
        data.load_corpus(DataConfig(corpus=f"tokens:{path}", token_dtype="uint32"))
