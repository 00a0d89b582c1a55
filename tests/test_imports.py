"""The package's modules import one way: no cycle, and only the commands import the
training loop (so a lower module never needs it to read a run or a checkpoint)."""

import ast
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "charlstm"
COMMANDS = {"charlstm.cli", "charlstm.sweep"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Each module of the package -> the package modules it imports, anywhere in it
    (inside functions too), relative or absolute."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                    if node.level else node.module
                for alias in node.names:  # `from . import checkpoint` imports a module
                    imported.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {m for m in imported if m in modules and m not in (name, "charlstm")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done, path = set(), []

    def visit(node):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import():
    graph = package_imports()
    assert "charlstm.train" in graph["charlstm.cli"]  # inside a command function
    assert "charlstm.checkpoint" in graph["charlstm.cli"]  # `from . import checkpoint`
    assert "charlstm.errors" in graph["charlstm.files"]


def test_no_import_cycle():
    assert find_cycle(package_imports()) is None


def test_a_planted_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_only_the_commands_import_the_training_loop():
    importers = {name for name, imported in package_imports().items() if "charlstm.train" in imported}
    assert importers <= COMMANDS, importers - COMMANDS
