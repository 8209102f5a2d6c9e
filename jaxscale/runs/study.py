"""Studies: a study file (config as code) and its loading.

A study is a Python file exposing ``runs(setting="default") -> list[RunConfig]`` and optionally
NAME, DESCRIPTION, SETTINGS and CONVENTION. Study files are executed with the full rights of the
caller, so jaxscale only ever executes a file whose path the user passed on the command line (or
``experiments/<name>.py`` under the current directory for a bare name); it never discovers or
imports studies on its own. A broken study file (syntax error, failing import, an exception in
runs(), runs() returning something other than RunConfigs) is a ConfigError naming file and line.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jaxscale.config import ConfigError, RunConfig
from jaxscale.runs.grids import DEFAULT_CONVENTION, dedupe


@dataclass(frozen=True)
class Study:
    """A loaded study file: its name, settings and run generator."""

    name: str
    path: Path
    description: str
    settings: tuple[str, ...]
    convention: str
    runs_fn: Callable[..., list[RunConfig]] = field(repr=False)

    def runs(self, setting: str = "default") -> list[RunConfig]:
        """The study's runs for `setting`, validated and de-duplicated by run_id."""
        if self.settings and setting not in self.settings:
            raise ConfigError(
                f"study {self.name!r} has no setting {setting!r}; "
                f"choose one of {list(self.settings)}"
            )
        call = f"runs({setting!r})"
        try:
            runs = self.runs_fn(setting)
        except (Exception, SystemExit) as e:
            raise _broken(self.path, e, f"{call} raised", _def_line(self.runs_fn)) from e
        where = f"{_at(self.path, _def_line(self.runs_fn))}: {call}"
        if not isinstance(runs, (list, tuple)) or not runs:
            empty = "an empty " if isinstance(runs, (list, tuple)) else "a "
            raise ConfigError(
                f"{where} must return a non-empty list of RunConfig, got {empty}"
                f"{type(runs).__name__}"
            )
        bad = [(i, type(r).__name__) for i, r in enumerate(runs) if not isinstance(r, RunConfig)]
        if bad:
            raise ConfigError(
                f"{where} must return RunConfig items; item {bad[0][0]} is a {bad[0][1]} "
                f"({len(bad)} of {len(runs)} are not RunConfig)"
            )
        return dedupe(runs)

    def default_results(self, setting: str = "default") -> Path:
        """results/<name> (results/<name>-<setting> for other settings) under the cwd."""
        return Path("results") / (self.name if setting == "default" else f"{self.name}-{setting}")


def resolve_study_path(study: str | Path) -> Path:
    """The file the user named, or experiments/<name>.py under the cwd for a bare name."""
    p = Path(study)
    if p.is_file():
        return p
    if p.suffix != ".py" and p.parent == Path("."):
        q = Path("experiments") / f"{p.name}.py"
        if q.is_file():
            return q
    raise ConfigError(
        f"study {str(study)!r} not found; pass the path of a study file, e.g. "
        f"experiments/quickstart.py"
    )


def load_study(study: str | Path) -> Study:
    """Execute a study file the user named and wrap its runs() (see module docstring)."""
    path = resolve_study_path(study)
    modname = f"jaxscale_study_{path.stem}"
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load study file {str(path)!r}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except (Exception, SystemExit) as e:
        sys.modules.pop(modname, None)
        raise _broken(path, e, "failed to load", None) from e
    fn = getattr(mod, "runs", None)
    if not callable(fn):
        raise ConfigError(
            f"{path}: a study file must define `def runs(setting: str = 'default') "
            f"-> list[RunConfig]`"
        )
    doc = (mod.__doc__ or "").strip()
    return Study(
        name=str(getattr(mod, "NAME", path.stem)),
        path=path,
        description=str(getattr(mod, "DESCRIPTION", doc.splitlines()[0] if doc else "")),
        settings=tuple(getattr(mod, "SETTINGS", ())),
        convention=str(getattr(mod, "CONVENTION", DEFAULT_CONVENTION)),
        runs_fn=fn,
    )


def _def_line(fn: Callable) -> int | None:
    code = getattr(fn, "__code__", None)
    return code.co_firstlineno if code is not None else None


def _broken(path: Path, err: BaseException, what: str, fallback: int | None) -> ConfigError:
    """One line naming the study file, the line in it where err arose, and err."""
    here = path.resolve()
    frames = [
        f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == here
    ]
    line = frames[-1].lineno if frames else fallback
    if isinstance(err, SyntaxError):
        if err.filename and Path(err.filename).resolve() == here:
            line = err.lineno
            detail = f"SyntaxError: {err.msg}"
        else:  # in a module the study imports
            detail = f"SyntaxError in {err.filename}:{err.lineno}: {err.msg}"
    else:
        detail = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return ConfigError(f"{_at(path, line)}: study {what}: {detail}")


def _at(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)
