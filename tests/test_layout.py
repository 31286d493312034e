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


# -- the search package's own rules ------------------------------------------------------------------

BACKENDS = ("rkd_search.search.backends.local", "rkd_search.search.backends.ray")
LIFECYCLE = "rkd_search.search.lifecycle"
NAMES = "rkd_search.search.names"
OPTUNA_PRIVATE = {"_storage", "_trial_id", "_study_id", "_cached_frozen_trial"}


def search_modules(root: Path = REPO) -> dict[str, Path]:
    return {module_name(p, root): p for p in (root / "search").rglob("*.py")}


def imports_of(module: str, edges: dict[str, set[str]]) -> set[str]:
    return {target for target in edges[module]}


def test_no_module_of_search_imports_both_back_ends():
    edges, _ = import_graph()
    for module, targets in edges.items():
        if not module.startswith("rkd_search.search"):
            continue
        reached = {b for b in BACKENDS if any(t == b or t.startswith(b + ".") for t in targets)}
        assert len(reached) < 2, f"{module} imports both back-ends"


def test_only_the_lifecycle_module_names_optunas_private_attributes():
    offenders = {}
    for module, path in search_modules().items():
        if module == LIFECYCLE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in OPTUNA_PRIVATE:
                offenders.setdefault(module, []).append(f"line {node.lineno}: .{node.attr}")
    assert not offenders, offenders


def test_no_rkd_name_is_written_outside_the_names_module():
    import re

    pattern = re.compile(r"\brkd\.[a-z_]+")
    offenders = {}
    for module, path in search_modules().items():
        if module == NAMES:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if pattern.search(node.value):
                    offenders.setdefault(module, []).append(f"line {node.lineno}: {node.value[:60]!r}")
    assert not offenders, offenders


def test_the_rules_checks_can_fail(tmp_path):
    """The three checks above on a made-up search package that breaks each rule."""
    (tmp_path / "search" / "backends").mkdir(parents=True)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "search" / "backends" / "__init__.py").write_text("")
    (tmp_path / "search" / "backends" / "local.py").write_text("")
    (tmp_path / "search" / "backends" / "ray.py").write_text("")
    (tmp_path / "search" / "bad.py").write_text(
        "from .backends import local, ray\nTAG = 'rkd.state'\n\ndef f(study):\n    return study._storage\n")
    edges, _ = import_graph(tmp_path)
    assert {"rkd_search.search.backends.local", "rkd_search.search.backends.ray"} <= edges["rkd_search.search.bad"]
    tree = ast.parse((tmp_path / "search" / "bad.py").read_text())
    assert any(isinstance(n, ast.Attribute) and n.attr in OPTUNA_PRIVATE for n in ast.walk(tree))
    assert any(isinstance(n, ast.Constant) and n.value == "rkd.state" for n in ast.walk(tree))


# -- the seams (issue: back-ends behind one registry, options in one place) ---------------------------

REGISTRY = "rkd_search.search.backends"
MAX_LINES = 300


def test_the_driver_and_the_trial_loop_import_no_back_end_module():
    """They know the back-ends through the registry (``backends.get_backend``) and the TrialLoop only."""
    edges, _ = import_graph()
    for module in ("rkd_search.search.driver", "rkd_search.search.trial_loop", "rkd_search.search.start",
                   "rkd_search.search.options", "rkd_search.search.setup"):
        reached = sorted(t for t in edges[module] if t.startswith(REGISTRY + "."))
        assert not reached, f"{module} imports back-end modules {reached}"


def test_the_list_of_back_ends_exists_once():
    """Only the registry names the back-ends together: no other module holds a list, tuple, set or
    dict of two or more of their names (the driver and setup.py each had one)."""
    from rkd_search.search.backends import REGISTRY as backends

    names = set(backends)
    offenders = []
    for module, path in search_modules().items():
        if module == REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else node.keys if isinstance(node, ast.Dict) else []
            named = {item.value for item in items if isinstance(item, ast.Constant) and item.value in names}
            if len(named) >= 2:
                offenders.append(f"{module}: line {node.lineno}")
    assert not offenders, offenders


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_under_300_lines(package):
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / package).rglob("*.py")}
    assert sizes, package
    assert not {name: n for name, n in sizes.items() if n >= MAX_LINES}, {name: n for name, n in sizes.items() if n >= MAX_LINES}
