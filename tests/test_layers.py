"""Imports run one way (issue 16, STYLE.md 16): a package imports only those below it, so none has a cycle.

    core (the paper's math, the types that cross between roles)   configs (the schema: a leaf)
    envs
    models (the policy model, its engines)
    actors   learner   teacher   (independent of each other)
    cluster (the driver, the roles, Ray, the command lines)

Every import counts, a function-level (lazy) one included. ``cluster`` is the application, not a library:
nothing imports it, and its command-line modules (COMMANDS: ``python -m cluster.launch`` and the others)
are imported by nothing in the project either, so a command line is a leaf that can move without moving
what it runs (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "configs", "envs", "models", "actors", "learner", "teacher", "cluster")
COMMANDS = ("cluster.launch", "cluster.sft", "cluster.experiment", "cluster.demo", "cluster.teacher_check")
MAY_IMPORT = {
    "core": set(),
    "configs": set(),
    "envs": {"core"},
    "models": {"core", "envs"},
    # The roles read their own config section (STYLE.md 4) and nothing of each other.
    "actors": {"core", "envs", "models", "configs"},
    "learner": {"core", "envs", "models", "configs"},
    "teacher": {"core", "envs", "models", "configs"},
    "cluster": {"core", "envs", "models", "configs", "actors", "learner", "teacher"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, by dotted name (``from a import b`` counts as both a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)} & set(PACKAGES)


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in sorted(imported_packages(path) - {package} - MAY_IMPORT[package]):
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "imports that run the wrong way:\n" + "\n".join(wrong)


def test_no_module_imports_a_command_line():
    importers = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package in (*PACKAGES, "bench", "scripts")
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(imported_modules(path) & set(COMMANDS))
    ]
    assert not importers, "command lines are leaves; move what they share into a library module:\n" + "\n".join(
        importers
    )


def test_the_allowed_imports_have_no_cycle():
    """So the table above is a layering: following allowed imports never returns to where it started."""
    seen: dict[str, str] = {}

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, " -> ".join((*path, package))
        if seen.get(package) == "done":
            return
        for below in MAY_IMPORT[package]:
            visit(below, (*path, package))
        seen[package] = "done"

    for package in PACKAGES:
        visit(package, ())


def test_the_check_sees_a_wrong_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom learner.learner import Learner\n\ndef f():\n    from cluster import driver\n")
    assert imported_packages(module) == {"learner", "cluster"}
    assert "cluster.driver" in imported_modules(module) and "learner.learner" in imported_modules(module)
