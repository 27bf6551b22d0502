"""Data flows one way through the package: every import (module level or inside a function) goes
from a higher layer to a lower one or stays inside its unit, and no modules import each other in
a cycle. Read with `ast`; nothing of the package is imported."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "h2mt_jax"
# Low to high; written once. Utilities first, then data -> backbone/weights/generation -> lm ->
# hmt -> hierarchy -> eval, train, and the command line on top.
LAYERS = ["typing", "shapes", "io", "errors", "data", "backbone", "weights", "generation", "lm",
          "embedder",
          "hmt", "hierarchy", "eval", "train", "cli"]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: pathlib.Path, modules: dict) -> set[str]:
    """Package modules that `name` imports (a `from a import b` of a submodule counts as a.b)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import a.b.c` where only a.b is a module file
                t = t.rpartition(".")[0]
            if t.startswith("h2mt_jax.") and t != name:
                found.add(t)
    return found


def _unit(module: str) -> str:
    return module.split(".")[1]


def test_layer_list_covers_the_package():
    units = {_unit(m) for m in _modules() if m != "h2mt_jax"}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS"


def test_no_import_runs_up_a_layer():
    modules = _modules()
    up = []
    for name, path in modules.items():
        if name == "h2mt_jax":
            continue
        for target in _imports(name, path, modules):
            if target == "h2mt_jax":
                up.append(f"{name} -> h2mt_jax (the package root imports lm: use h2mt_jax.lm)")
            elif LAYERS.index(_unit(target)) > LAYERS.index(_unit(name)):
                up.append(f"{name} -> {target}")
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(up))


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles, state, stack = [], {}, []

    def visit(n):  # depth-first search; a back edge closes a cycle
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_planted_violation(tmp_path):
    # The checks must be able to fail: a data module importing the trainer is caught.
    global PACKAGE
    fake = tmp_path / "h2mt_jax"
    for unit in ("data", "train"):
        (fake / unit).mkdir(parents=True)
        (fake / unit / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "data" / "items.py").write_text("def f():\n    from h2mt_jax.train import loop\n")
    (fake / "train" / "loop.py").write_text("from h2mt_jax.data import items\n")
    old, PACKAGE = PACKAGE, fake
    try:
        for check in (test_no_import_runs_up_a_layer, test_no_import_cycle):
            try:
                check()
            except AssertionError as e:
                assert "h2mt_jax.data.items -> h2mt_jax.train.loop" in str(e)
            else:
                raise AssertionError(f"{check.__name__} missed the planted violation")
    finally:
        PACKAGE = old
