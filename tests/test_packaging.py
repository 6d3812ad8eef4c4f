"""`pip install` gives the whole toolkit: the wheel's dependencies, files and command, run outside the checkout."""

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGES = ("backbones", "classification", "detection", "engine", "tools")
SUBCOMMANDS = ("train-cls", "eval-cls", "train-det", "eval-det", "predict", "export", "convert-weights",
               "model-stats", "make-shapes", "make-crops", "convert-data", "browse-data", "demo", "plot-curves",
               "analyze-responses")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from the checkout, installed (without dependencies: they are this environment's) into
    a folder of its own."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("resnet_toolkit-*.whl")
    target = out / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return wheel, target


def run(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`resnet-toolkit *args` as installed, from `cwd`, seeing the installed packages and not the checkout."""
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(target / "bin" / "resnet-toolkit"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def imported_distributions() -> tuple[set[str], set[str]]:
    """The distributions the toolkit's packages import, read from their source: (imported at module level, so
    needed by every install; imported inside a function, so needed by the features that call it)."""
    owners = importlib.metadata.packages_distributions()
    ours = set(PACKAGES)
    at_top, inside = set(), set()
    for path in (p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                root = module.split(".")[0]
                if root in ours or root in sys.stdlib_module_names or root == "__future__":
                    continue
                for dist in owners.get(root, [root]):
                    (at_top if id(node) in top else inside).add(re.sub(r"[-_.]+", "-", dist).lower())
    return at_top, inside - at_top


def test_the_wheel_declares_its_dependencies_and_carries_the_recipes_and_the_command(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    declared = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist")]

    def name(requirement: str) -> str:
        return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement)[0]).lower()

    required = {name(r) for r in declared if "extra ==" not in r}
    anywhere = {name(r) for r in declared}
    at_top, inside = imported_distributions()
    assert at_top and at_top <= required, at_top - required  # what every import of a package needs
    assert inside <= anywhere, inside - anywhere  # optional features: a dependency or an extra
    assert {"onnxruntime", "faster-coco-eval"} <= inside - required  # the extras are imported lazily
    shipped = {Path(n).relative_to("engine/recipes").as_posix() for n in names if n.startswith("engine/recipes/")}
    in_checkout = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").glob("*/*.yaml")}
    assert shipped == in_checkout
    assert "resnet-toolkit = tools.cli:main" in entry_points
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names


def test_the_installed_command_runs_every_tool_from_any_folder(installed, tmp_path):
    _, target = installed
    where = run(target, tmp_path, "--help")
    assert where.returncode == 0 and all(name in where.stdout for name in SUBCOMMANDS)
    probe = subprocess.run([sys.executable, "-c", "import engine, tools; print(engine.__file__, tools.__file__)"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True,
                           text=True, check=True)
    assert all(Path(f).is_relative_to(target) for f in probe.stdout.split())  # not the checkout's
    for name in SUBCOMMANDS:
        shown = run(target, tmp_path, name, "--help")
        assert shown.returncode == 0 and shown.stdout.startswith(f"usage: resnet-toolkit {name}"), shown.stderr
    stats = run(target, tmp_path, "model-stats", "--arch", "resnet18", "--json")
    assert stats.returncode == 0 and abs(json.loads(stats.stdout)["macs"] / 1.8e9 - 1) < 0.01  # Table 1: 1.8e9
    made = run(target, tmp_path, "make-shapes", "--output", "shapes", "--num-train", "8", "--num-val", "2",
               "--min-side", "64", "--max-side", "80")
    assert made.returncode == 0, made.stderr
    listed = run(target, tmp_path, "train-det", "--list-configs")
    assert "detection/coco_R101_C4" in listed.stdout.split()
    trained = run(target, tmp_path, "train-det", "--config", "shapes_resnet18_C4", "--data", "shapes", "--output",
                  "run", "--max-iter", "2", "--no-progress", "model.backbone_options.width=8", "model.min_size=[64]",
                  "model.max_size=96", "data.workers=0", "test.vis_images=1")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run" / "model_final.pth").is_file() and "final:" in trained.stdout
