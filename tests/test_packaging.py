"""Packaging: what the installed product holds and finds.

* the shipped latency profiles (top-level ``hw_profiles/``) are the package data of
  ``halp_onnx.hw_profiles`` and :data:`halp_onnx.profiles.store.SHIPPED_DIR` finds them through
  ``importlib.resources``;
* nothing under ``halp_onnx/`` imports ``bench`` (model zoo, baselines), ``tests`` or ``tools``,
  none of which is installed;
* pyproject's explicit package list covers every ``halp_onnx`` subpackage on disk;
* a wheel built from the checkout (a few seconds, no network: ``--no-build-isolation``) holds the
  profiles and no bench/tests/tools code, and an interpreter importing halp_onnx from it finds the
  profiles inside it. Skipped when no wheel can be built here.
"""
from __future__ import annotations

import ast
import importlib.resources
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from halp_onnx.profiles import store

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "halp_onnx"
FORBIDDEN = ("bench", "tests", "tools")


def _forbidden(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in FORBIDDEN


def _imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``, including ``importlib.import_module("x")``
    and ``__import__("x")`` with a constant name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if fname in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def _subpackages_on_disk() -> set[str]:
    """Every folder under halp_onnx/ holding Python modules, as a dotted package name."""
    pkgs = set()
    for py in PKG.rglob("*.py"):
        rel = py.parent.relative_to(REPO)
        if "__pycache__" not in rel.parts:
            pkgs.add(".".join(rel.parts))
    return pkgs


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------- shipped profiles
def test_shipped_profiles_found_through_importlib_resources():
    res = importlib.resources.files("halp_onnx.hw_profiles")
    assert res.joinpath("ort-cpu.json").is_file()
    assert isinstance(store.SHIPPED_DIR, Path)
    assert (store.SHIPPED_DIR / "ort-cpu.json").is_file()
    # SHIPPED_DIR is the package data, not a checkout fallback that happens to exist
    assert store.SHIPPED_DIR.resolve() == Path(str(res)).resolve()
    assert store._shipped_dir().resolve() == store.SHIPPED_DIR.resolve()


# ------------------------------------------------------------------------- product vs bench/tests
def test_product_never_imports_bench_tests_or_tools():
    offenders = [f"{py.relative_to(REPO)}:{line}: {mod}"
                 for py in sorted(PKG.rglob("*.py")) if "__pycache__" not in py.parts
                 for line, mod in _imports_of(py) if _forbidden(mod)]
    assert not offenders, "halp_onnx must not depend on bench/tests/tools:\n" + "\n".join(offenders)


def test_bench_modules_left_the_product():
    assert not (PKG / "zoo.py").exists() and not (PKG / "passes" / "baselines.py").exists()
    assert (REPO / "bench" / "zoo.py").is_file() and (REPO / "bench" / "baselines.py").is_file()
    import bench.baselines
    import bench.zoo

    assert Path(bench.zoo.__file__).resolve().parent == REPO / "bench"


def test_pyproject_packages_cover_every_subpackage():
    cfg = _pyproject()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    assert all(p == "halp_onnx" or p.startswith("halp_onnx.") for p in listed), listed
    missing = _subpackages_on_disk() - listed
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert cfg["package-dir"]["halp_onnx.hw_profiles"] == "hw_profiles"
    assert "*.json" in cfg["package-data"]["halp_onnx.hw_profiles"]


# ----------------------------------------------------------------------------------------- wheel
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the packaged sources (never in the shared checkout's build/)."""
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    for name in ("halp_onnx", "hw_profiles", "bench", "tests", "tools"):  # bench/tests/tools: must stay out
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "-q", "-w", str(out), str(src)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=src,
                              env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot build a wheel here: {e}")
    wheels = list(out.glob("halp_onnx-*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        pytest.skip(f"cannot build a wheel here (rc {proc.returncode}): {proc.stderr[-800:]}")
    return wheels[0]


@pytest.mark.wheel
def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "halp_onnx/hw_profiles/ort-cpu.json" in names
    assert "halp_onnx/profiles/store.py" in names
    dist, version = wheel.name.split("-")[:2]
    tops = {n.split("/")[0] for n in names}
    assert tops == {"halp_onnx", f"{dist}-{version}.dist-info"}, tops
    bad = [n for n in names if n.endswith(("/zoo.py", "/baselines.py"))
           or any(part in ("bench", "tests", "tools") for part in n.split("/")[:-1])]
    assert not bad, bad
    # every module of the product made it in
    on_disk = {str(p.relative_to(REPO)).replace(os.sep, "/") for p in PKG.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert not on_disk - set(names), sorted(on_disk - set(names))


@pytest.mark.wheel
def test_wheel_install_finds_its_profiles(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import halp_onnx, halp_onnx.profiles.store as s; "
            "print(halp_onnx.__file__); print(s.SHIPPED_DIR); print((s.SHIPPED_DIR / 'ort-cpu.json').is_file())")
    # the extracted wheel goes first on sys.path, ahead of the editable finder; cwd outside the repo
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pkg_file, shipped, ok = proc.stdout.split("\n")[:3]
    assert Path(pkg_file).resolve().is_relative_to(site.resolve())
    assert Path(shipped).resolve() == (site / "halp_onnx" / "hw_profiles").resolve()
    assert ok == "True"
