"""The map users read holds: classification and detection never import each other, detection's building and
weight mapping do not import each other, and the tools read the classification schema, not its training loop."""

import ast

import pytest

from tests.helpers import ROOT


def imported_modules(path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package,forbidden", [("classification", "detection"), ("detection", "classification")])
def test_the_two_tasks_never_import_each_other(package, forbidden):
    for path in (ROOT / package).rglob("*.py"):
        assert not {m for m in imported_modules(path) if m.split(".")[0] == forbidden}, path


def test_detection_weights_maps_state_dicts_and_does_not_build():
    assert "detection.build" not in imported_modules(ROOT / "detection" / "weights.py")
    assert "detection.weights" in imported_modules(ROOT / "detection" / "build.py")


@pytest.mark.parametrize("tool", ["eval_cls", "analyze_responses"])
def test_evaluation_tools_do_not_import_the_training_loop(tool):
    assert "classification.train" not in imported_modules(ROOT / "tools" / f"{tool}.py")
