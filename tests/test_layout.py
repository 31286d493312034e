"""The house's rules, read from the source with ``ast``: dependencies point one way, with no circle.

search -> spaces -> trainer; trainer and spaces never import search; trainer knows nothing of
Optuna, Ray or MLflow. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "spaces", "trainer")
NAMESPACE = "rkd_search"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([NAMESPACE, *parts])


def import_graph(root: Path = REPO) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the project's modules, external top-level packages each module imports)."""
    files = {module_name(p, root): p for package in PACKAGES for p in (root / package).rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in files}
    external: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source for alias in node.names]
            for target in targets:
                if target.startswith(NAMESPACE + ".") or target == NAMESPACE:
                    while target not in files and "." in target:
                        target = target.rsplit(".", 1)[0]
                    if target in files and target != name:
                        edges[name].add(target)
                else:
                    external[name].add(target.split(".")[0])
    return edges, external


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_finds_circles_and_follows_relative_imports(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "trainer" / "a.py").write_text("from .b import x\n")
    (tmp_path / "trainer" / "b.py").write_text("def f():\n    from rkd_search.trainer import a\n")
    edges, _ = import_graph(tmp_path)
    assert edges["rkd_search.trainer.a"] == {"rkd_search.trainer.b"}
    assert find_cycle(edges) == ["rkd_search.trainer.a", "rkd_search.trainer.b", "rkd_search.trainer.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_import_circle_among_the_projects_modules():
    edges, _ = import_graph()
    assert len(edges) > 20, "the walk found too few modules"
    assert find_cycle(edges) is None, f"import circle: {' -> '.join(find_cycle(edges))}"


@pytest.mark.parametrize("package", ["trainer", "spaces"])
def test_trainer_and_spaces_never_import_search(package):
    edges, _ = import_graph()
    offenders = {m: sorted(t for t in targets if t.startswith(f"{NAMESPACE}.search"))
                 for m, targets in edges.items() if m.startswith(f"{NAMESPACE}.{package}")}
    assert not any(offenders.values()), offenders


def test_trainer_knows_nothing_of_optuna_ray_or_mlflow():
    _, external = import_graph()
    offenders = {m: sorted(names & {"optuna", "ray", "mlflow"}) for m, names in external.items() if m.startswith(f"{NAMESPACE}.trainer")}
    assert not any(offenders.values()), offenders


def test_spaces_import_no_back_end():
    _, external = import_graph()
    offenders = {m: sorted(names & {"ray", "mlflow"}) for m, names in external.items() if m.startswith(f"{NAMESPACE}.spaces")}
    assert not any(offenders.values()), offenders
