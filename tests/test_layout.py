"""The package's shape: no import circles, modules of a readable size, a wheel that installs.

The import graph is read from the source (ast), every import statement counted, those inside
functions and under `if TYPE_CHECKING:` too: a lazy import may save start-up time, never
hide a circle.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "xray_ai"
MAX_MODULE_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The xray_ai modules one import statement loads (a package means its __init__)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from pkg import name`: the submodule pkg.name where there is one, else pkg itself.
    found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    return found if len(found) == len(node.names) else found + [target]


def import_graph() -> dict[str, set[str]]:
    """module -> the xray_ai modules it imports anywhere in its source."""
    sources = _sources()
    known = set(sources)
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, name, path.name == "__init__.py", known):
                    if target in known and target != name:
                        edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_lazy_and_type_checking_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "xray_ai"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .one import f\n")
    (pkg / "sub" / "one.py").write_text("def f():\n    from xray_ai.sub import two\n")
    (pkg / "sub" / "two.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import one\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = import_graph()
    assert graph["xray_ai.sub"] == {"xray_ai.sub.one"}
    assert graph["xray_ai.sub.one"] == {"xray_ai.sub.two"}
    assert graph["xray_ai.sub.two"] == {"xray_ai.sub.one"}
    assert find_cycle(graph) == ["xray_ai.sub.one", "xray_ai.sub.two", "xray_ai.sub.one"]


def test_no_import_circles_among_xray_ai_modules():
    graph = import_graph()
    assert len(graph) > 40, "the graph should hold every module of the package"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_module_is_over_400_lines():
    long = {name: n for name, p in _sources().items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_the_rooms_keep_their_boundaries():
    """images/, outputs/, registry and the explain method table never import the model side;
    the library never imports streamlit."""
    graph = import_graph()
    sources = _sources()
    for name, path in sources.items():
        text = path.read_text()
        assert "import streamlit" not in text and "from streamlit" not in text, name
    light = [m for m in graph if m.startswith(("xray_ai.images", "xray_ai.outputs", "xray_ai.registry"))]
    assert light, "the light rooms exist"
    for name in light:
        heavy = {t for t in graph[name] if t.startswith(("xray_ai.training", "xray_ai.serving.manager"))}
        assert not heavy, f"{name} imports the model side: {sorted(heavy)}"
        tree = ast.parse(sources[name].read_text())
        modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not modules & {"tensorflow", "keras"}, f"{name} imports tensorflow/keras"


def _requirements(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


MODELS_BUDGET_BYTES = 200 * 10**6  # models/README.md "Budget"


def test_the_models_folder_stays_within_its_budget():
    """What a clone carries in models/ (the files git tracks there), within 200 MB."""
    listed = subprocess.run(["git", "ls-files", "-z", "models"], cwd=REPO, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: which files ship is what git tracks")
    files = [REPO / name for name in listed.stdout.decode().split("\0") if name]
    total = sum(f.stat().st_size for f in files if f.is_file())
    biggest = sorted(files, key=lambda f: f.stat().st_size if f.is_file() else 0)[-3:]
    assert total <= MODELS_BUDGET_BYTES, (f"models/ holds {total / 1e6:.1f} MB, over the 200 MB budget; the largest: "
                                          f"{', '.join(f.name for f in biggest)}")


def test_pyproject_declares_the_pinned_requirements_as_compatible_ranges():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {r.name.lower(): r for r in map(Requirement, project["dependencies"])}
    pins = _requirements(REPO / "requirements.txt")
    assert set(declared) == set(pins)
    for name, version in pins.items():
        assert declared[name].specifier.contains(version), f"{name}=={version} outside {declared[name]}"
    assert project["scripts"]["xray-ai"] == "xray_ai.cli:main"


def _copy_source(dest: Path) -> Path:
    """pyproject, README and the package only: pip would otherwise leave build/ and
    *.egg-info in the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(PACKAGE, dest / "xray_ai", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _pip(python: Path | str, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = _copy_source(root / "src")
    # No build isolation: setuptools and wheel of this environment build it, so the test
    # needs no download.
    _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source))
    (built,) = (root / "dist").glob("xray_ai-*.whl")
    return built


def test_the_wheel_holds_every_module_of_the_source_tree(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")}
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
    packages = {p.parent.relative_to(REPO).as_posix() for p in PACKAGE.rglob("__init__.py")}
    assert {"xray_ai/images", "xray_ai/serving", "xray_ai/explain", "xray_ai/outputs",
            "xray_ai/training", "xray_ai/phantoms", "xray_ai/cli"} <= packages
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "xray-ai = xray_ai.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_pip_install_in_a_fresh_venv_gives_a_working_xray_ai_command(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # The dependencies come from this test environment (a .pth file puts its site-packages
    # on the new venv's path) so nothing is downloaded; xray_ai itself only from the wheel.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    Path(site, "test_environment.pth").write_text("\n".join(ours) + "\n")
    _pip(python, "install", "--no-deps", "--no-index", str(wheel))

    run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    xray_ai = env_dir / "bin" / "xray-ai"
    where = subprocess.run([str(python), "-c", "import xray_ai; print(xray_ai.__file__)"], cwd=tmp_path,
                           env=run_env, check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(env_dir)), f"xray_ai imported from {where}, not from the install"
    helped = subprocess.run([str(xray_ai), "--help"], cwd=tmp_path, env=run_env, capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    assert "predict" in helped.stdout and "phantoms" in helped.stdout
    out = tmp_path / "phantoms"
    made = subprocess.run([str(xray_ai), "phantoms", "--condition", "fracture", "--count", "4", "--out", str(out),
                           "--seed", "3"], cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    images = [p for p in out.rglob("*.png") if not p.name.endswith("_mask.png")]
    assert len(images) == 4, sorted(p.name for p in out.rglob("*"))
