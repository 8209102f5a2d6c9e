"""Bad input through the CLI: one readable line, non-zero exit, no traceback."""

import argparse
import subprocess
import sys

import numpy as np
import pytest

from jaxscale import cli
from jaxscale.cli import app
from jaxscale.runs.rundir import RunDir

TINY = [
    "--model.d_model=32",
    "--model.n_heads=2",
    "--model.d_ff=64",
    "--model.n_layers=1",
    "--model.context_length=16",
    "--train.steps=2",
    "--train.batch_size=4",
    "--train.warmup_steps=0",
    "--data.max_bytes=200000",
    "--no-progress",
]


def _run(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--model.d_model=100", "--model.n_heads=3"], "n_heads"),
        (["train", "--model.d_modle=64"], "did you mean 'd_model'"),
        (["train", "--train.steps=abc"], "expected int"),
        (["train", "--model.activation=relu"], "activation"),
        (["train", "--mesh.spec=data=3"], "needs 3 devices"),
        (["train", "--mesh.spec=data=1,tensor=-1,fsdp=-1"], "at most one axis"),
        (["train", "--train.batch_size=6", "--train.grad_accum=4"], "grad_accum"),
        (["train", "--config", "/nonexistent/run.yaml"], "does not exist"),
        (["train", "--width=64"], "--width and --depth go together"),
        (["train", "stray"], "unrecognised argument"),
    ],
)
def test_invalid_configs_give_one_line(capsys, argv, needle):
    code, err = _run(capsys, argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("jaxscale: error:")


def test_missing_corpus(capsys, tmp_path):
    code, err = _run(
        capsys,
        ["train", *TINY, f"--data.corpus={tmp_path}/nothing/*.txt", f"--run-dir={tmp_path}/r"],
    )
    assert code == 2 and "nothing" in err and len(err.splitlines()) == 1


def test_token_file_with_ids_beyond_vocab(capsys, tmp_path):
    p = tmp_path / "tok.bin"
    np.arange(5000, dtype=np.uint16).tofile(p)
    code, err = _run(
        capsys, ["train", *TINY, f"--data.corpus=tokens:{p}", f"--run-dir={tmp_path}/r"]
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "vocab" in err.lower()


def test_token_file_size_not_multiple_of_dtype(capsys, tmp_path):
    p = tmp_path / "tok.bin"
    p.write_bytes(b"\x01\x00" * 1000 + b"\x01")
    code, err = _run(
        capsys, ["train", *TINY, f"--data.corpus=tokens:{p}", f"--run-dir={tmp_path}/r"]
    )
    assert code == 2 and len(err.splitlines()) == 1


def test_mesh_that_does_not_divide_model(capsys, tmp_path):
    # One device: tensor=1 always divides; ask for a batch the mesh cannot split instead.
    code, err = _run(
        capsys,
        [
            "train",
            *TINY,
            "--mesh.spec=data=1",
            "--train.batch_size=4",
            "--train.grad_accum=8",
            f"--run-dir={tmp_path}/r",
        ],
    )
    assert code == 2 and "grad_accum" in err


def test_unsafe_yaml_rejected(capsys, tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("train: !!python/object/apply:os.system ['touch pwned']\n")
    code, err = _run(capsys, ["train", "--config", str(p)])
    assert code == 2 and "not valid YAML" in err
    assert not (tmp_path / "pwned").exists()


def test_process_level_no_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "jaxscale.cli", "train", "--model.n_heads=7"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for key in ("--model.d_model", "--train.lr", "--data.corpus", "--mesh.spec", "--train.gns"):
        assert key in out


COMMANDS = [
    "train",
    "study",
    "flops",
    "sweep",
    "frontier",
    "fit",
    "critical-batch",
    "shape",
    "report",
    "eval",
    "shift",
    "lr",
    "efficiency",
    "step-law",
    "suggest",
    "timescale",
    "export",
    "anneal",
]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_registers_and_dispatches():
    commands = _subcommands(app.build_parser())
    assert list(commands) == COMMANDS
    assert all(callable(p.get_default("func")) for p in commands.values())


def test_command_module_that_fails_to_import_breaks_the_parser(monkeypatch, tmp_path):
    (tmp_path / "jaxscale_broken_command.py").write_text(
        "raise ImportError('an optional dependency is missing')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(app, "COMMANDS", (*app.COMMANDS, "jaxscale_broken_command"))
    with pytest.raises(ImportError, match="optional dependency is missing"):
        app.build_parser()


@pytest.mark.parametrize(
    "command",
    ["fit", "frontier", "critical-batch", "shape", "report", "shift", "lr", "efficiency", "export"],
)
def test_analysis_commands_describe_every_flag(command):
    p = _subcommands(app.build_parser())[command]
    assert p.description
    for action in p._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"


def test_train_cli_end_to_end(capsys, tmp_path):
    code = cli.main(["train", *TINY, f"--run-dir={tmp_path}/r"])
    out = capsys.readouterr().out
    assert code == 0
    assert (
        "Final validation loss" in " ".join(out.split())
        and RunDir(tmp_path / "r").has_summary_file()
    )
