"""The package's boundaries: the library never imports the CLI, the recipe layer does not import the
trainer, and no two parallax modules import each other, directly or through others."""
from __future__ import annotations

import ast
from pathlib import Path

import parallax

ROOT = Path(parallax.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, (ast.Name, ast.Attribute)) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """Every parallax module ``path`` imports, at module level or inside functions (not under TYPE_CHECKING)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("parallax"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("parallax"):
                    found.add(target)
                    found.update(f"{target}.{a.name}" for a in child.names)  # `from . import checkpoint`
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}


def test_the_library_never_imports_the_cli():
    offenders = {m: sorted(t for t in deps if t == "parallax.cli" or t.startswith("parallax.cli."))
                 for m, deps in _graph().items()
                 if not (m == "parallax.cli" or m.startswith("parallax.cli.") or m == "parallax.__main__")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_the_recipe_layer_does_not_import_the_trainer():
    assert "parallax.trainer" not in _graph()["parallax.recipe"]


def test_no_import_cycle_among_parallax_modules():
    graph = _graph()
    # a package's __init__ re-exports its modules; its modules importing the package is not a cycle
    graph = {m: {t for t in deps if not (m.startswith(t + ".") and t in graph)} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t] if t in stack else [m, t])
            elif t not in state:
                walk(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert cycles == []
