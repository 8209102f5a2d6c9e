"""Studies: a study file (config as code) and its loading.

A study is a Python file exposing ``runs(setting="default") -> list[RunConfig]`` and optionally
NAME, DESCRIPTION, SETTINGS and CONVENTION. Study files are executed with the full rights of the
caller, so jaxscale only ever executes a file whose path the user passed on the command line (or
``experiments/<name>.py`` under the current directory for a bare name); it never discovers or
imports studies on its own.
"""

from __future__ import annotations

import importlib.util
import sys
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
        runs = self.runs_fn(setting)
        if not isinstance(runs, (list, tuple)) or not runs:
            raise ConfigError(f"{self.path}: runs({setting!r}) must return a non-empty list")
        bad = [type(r).__name__ for r in runs if not isinstance(r, RunConfig)]
        if bad:
            raise ConfigError(f"{self.path}: runs() returned non-RunConfig items ({bad[0]})")
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
    spec.loader.exec_module(mod)
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
