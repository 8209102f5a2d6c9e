"""The package's layers: config -> core -> runs -> analysis -> cli, no cycles, no hidden imports."""

from __future__ import annotations

import ast
from pathlib import Path

import jaxscale

ROOT = Path(jaxscale.__file__).parent
LAYERS = ("config", "core", "runs", "analysis", "cli")
# Imported inside functions on purpose: heavy or optional, kept off the CLI's start-up path.
LAZY_OK = (
    "matplotlib",
    "numpyro",
    "arviz",
    "orbax",
    "tokenizers",
    "datasets",
    "etils",
    "yaml",
    "pydoc_data",  # the "prose" eval set: 1 MB of text loaded only when asked for
    "wandb",  # optional tracker (`jaxscale train --wandb`), not a dependency
)


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(tree: ast.Module, name: str, *, top_level: bool) -> list[tuple[str, int]]:
    """(imported module, line) of `jaxscale` imports, at module level or inside functions."""
    nodes = tree.body if top_level else [n for n in ast.walk(tree) if n not in tree.body]
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, node.lineno)]
            # `from jaxscale.core import train` imports the module jaxscale.core.train
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in out if m.split(".")[0] == "jaxscale"]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer():
    loose = [m for m in _modules() if m != "jaxscale" and _layer(m) is None]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_no_layer_imports_a_higher_one():
    bad = []
    for name, tree in _modules().items():
        mine = _layer(name)
        for top in (True, False):
            for target, line in _imports(tree, name, top_level=top):
                theirs = _layer(target)
                if mine is not None and theirs is not None and theirs > mine:
                    bad.append(f"{name}:{line} imports {target}")
    assert not bad, "lower layers importing higher ones:\n" + "\n".join(bad)


def test_package_imports_are_at_module_level():
    hidden = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        mod = sub.module if isinstance(sub, ast.ImportFrom) else sub.names[0].name
                        if (mod or "").split(".")[0] not in LAZY_OK:
                            hidden.append(f"{name}:{sub.lineno} {mod}")
    assert not hidden, "imports hidden inside functions:\n" + "\n".join(hidden)


def test_module_import_graph_has_no_cycles():
    mods = _modules()
    graph = {
        name: {t for t, _ in _imports(tree, name, top_level=True) if t in mods and t != name}
        for name, tree in mods.items()
    }
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            # A package's __init__ re-exporting its own submodules is not a cycle of layers.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
