"""Bad input gets one line naming the problem and the fix, exit code 2, and nothing written."""

from __future__ import annotations

import re

import pytest

from jaxscale.cli import main

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
