"""The TensorRT Python-API driver uses only names every supported release really has.

``tests/data/trt_surface/<version>.json`` holds the classes, members, enums and functions of the
real bindings of 8.6.1, 10.4.0 (the last release with Volta), 10.16.1.11 and 11.4.0.106, read from
NVIDIA's wheels by ``tools/trt_surface.py``.  The driver lists what it uses in ``TRT_API`` (names
only some releases have in ``TRT_API_MAJORS``, with the majors whose code branch uses them); these
tests check (a) that every listed name exists in every supported release's surface, or in those
its branch covers, and (b) with an ast scan of ``halp_onnx/``, that the code uses no TensorRT name
the list does not have.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from halp_onnx.errors import HalpError
from halp_onnx.profiles.trt import api_driver
from halp_onnx.profiles.trt.common import SUPPORTED, UNSUPPORTED_MAJORS, trt_version

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "halp_onnx"
SURFACES = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "tests/data/trt_surface").glob("*.json"))}
TRT_NAMES = {"trt", "tensorrt"}  # what the package calls the imported module


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _has(surface: dict, cls: str, name: str) -> bool:
    if cls == "":
        return name in surface["classes"] or name in surface["enums"] or name in surface["functions"]
    return name in surface["classes"].get(cls, ()) or name in surface["enums"].get(cls, ())


def missing(api: dict[str, tuple[str, ...]], majors: dict[str, tuple[int, ...]],
            surfaces: dict[str, dict] = SURFACES) -> list[str]:
    """``version: Class.name`` for every listed name a release its branch covers lacks."""
    out = []
    for cls, names in api.items():
        keys = [(cls, n) for n in names] + ([("", cls)] if cls and ("", cls) not in
                                             [("", n) for n in api.get("", ())] else [])
        for owner, name in keys:
            dotted = f"{owner}.{name}" if owner else name
            need = majors.get(dotted) or majors.get(owner) if owner else majors.get(name)
            for version, surface in surfaces.items():
                if need is None or _major(version) in need:
                    if owner and owner not in surface["classes"] and owner not in surface["enums"]:
                        out.append(f"{version}: class {owner} (for {dotted})")
                    elif not _has(surface, owner, name):
                        out.append(f"{version}: {dotted}")
    return sorted(set(out))


def _imports_tensorrt(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tensorrt" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tensorrt":
            return True
    return False


def used(tree: ast.AST, objects: dict[str, str]) -> set[tuple[str, str]]:
    """(class, name) of every TensorRT name a module uses: ``trt.X`` (class ""), ``trt.X.Y``,
    ``var.Y`` for a variable ``objects`` says holds a TensorRT object, and the methods of classes
    that subclass ``trt.X`` (overrides TensorRT calls)."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in TRT_NAMES:
                found.add(("", node.attr))
            elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id in TRT_NAMES:
                found.add((base.attr, node.attr))
            elif isinstance(base, ast.Name) and base.id in objects:
                found.add((objects[base.id], node.attr))
        if isinstance(node, ast.ClassDef):
            for b in node.bases:
                if isinstance(b, ast.Attribute) and isinstance(b.value, ast.Name) and b.value.id in TRT_NAMES:
                    found |= {(b.attr, f.name) for f in node.body
                              if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")}
    return found


# Attribute names of the package's own (non-TensorRT) objects that a TensorRT class also has.
NOT_TENSORRT = {"name", "shape", "dtype", "values", "reset", "get", "value", "type", "size", "error",
                "max", "min", "location", "flags", "message", "stage", "samples_ms", "median_ms",
                "layers", "bindings", "append", "extend", "items"}


def unlisted(source: str, api: dict[str, tuple[str, ...]], objects: dict[str, str]) -> list[str]:
    """TensorRT names ``source`` uses that ``api`` does not list, plus any attribute named like
    a TensorRT member on an object the scan cannot type (a chained call) that ``api`` lacks."""
    tree = ast.parse(source)
    out = sorted(f"{c}.{n}" if c else n for c, n in used(tree, objects) if n not in api.get(c, ()))
    listed = {n for names in api.values() for n in names}
    members = {m for s in SURFACES.values() for group in ("classes", "enums") for ms in s[group].values() for m in ms}
    typed = {id(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and (
        isinstance(n.value, ast.Name) and (n.value.id in TRT_NAMES or n.value.id in objects)
        or isinstance(n.value, ast.Attribute) and isinstance(n.value.value, ast.Name) and n.value.value.id in TRT_NAMES)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and id(node) not in typed and node.attr in members
                and node.attr not in listed and node.attr not in NOT_TENSORRT):
            out.append(f"?.{node.attr} (line {node.lineno})")
    return out


def _modules_using_tensorrt() -> dict[Path, ast.AST]:
    trees = {p: ast.parse(p.read_text()) for p in sorted(PKG.rglob("*.py"))}
    return {p: t for p, t in trees.items() if _imports_tensorrt(t)}


# -- the surfaces ------------------------------------------------------------------------------------


def test_surfaces_are_the_supported_releases() -> None:
    versions = sorted(SURFACES, key=lambda v: tuple(map(int, v.split("."))))
    assert {"8.6.1", "10.4.0"} <= set(versions)
    assert {_major(v) for v in versions} == {8, 10, 11}
    low, high = SUPPORTED
    assert versions[0].startswith(low + ".") and _major(versions[-1]) == int(high.split(".")[0])
    for major in range(int(low.split(".")[0]), int(high.split(".")[0]) + 1):
        assert major in UNSUPPORTED_MAJORS or any(_major(v) == major for v in versions), major
    for version in versions:  # each surface is a release the driver accepts
        assert trt_version(SimpleNamespace(__version__=version))[0] == _major(version)
    total = sum((ROOT / "tests/data/trt_surface" / f"{v}.json").stat().st_size for v in versions)
    assert total < 400_000


@pytest.mark.parametrize("version", sorted(SURFACES))
def test_surface_matches_what_the_release_is_known_by(version: str) -> None:
    s = SURFACES[version]
    assert s["version"] == version and not any(n.startswith("__") for ms in s["classes"].values() for n in ms)
    engine, context, config, builder = (set(s["classes"][c]) for c in
                                        ("ICudaEngine", "IExecutionContext", "IBuilderConfig", "Builder"))
    assert {"set_memory_pool_limit"} <= config and "build_serialized_network" in builder
    assert {"get_tensor_name", "num_io_tensors"} <= engine and {"execute_async_v3", "set_tensor_address"} <= context
    if _major(version) == 8:
        assert "build_engine" in builder and "max_workspace_size" in config
        assert "get_binding_index" in engine and "execute_async_v2" in context
    else:
        assert "build_engine" not in builder and "max_workspace_size" not in config
        assert "get_binding_index" not in engine and "execute_async_v2" not in context
    weak = {"FP16", "INT8"} <= set(s["enums"]["BuilderFlag"])
    assert weak == (_major(version) <= 10) == ("IInt8EntropyCalibrator2" in s["classes"])


# -- (a) what the driver lists exists --------------------------------------------------------------


def test_every_listed_name_exists_in_the_releases_it_is_used_on() -> None:
    assert missing(api_driver.TRT_API, api_driver.TRT_API_MAJORS) == []


def test_version_branches_are_declared_consistently() -> None:
    listed = {f"{c}.{n}" if c else n for c, names in api_driver.TRT_API.items() for n in names}
    low, high = (int(v.split(".")[0]) for v in SUPPORTED)
    for dotted, majors in api_driver.TRT_API_MAJORS.items():
        assert dotted in listed, f"{dotted} is guarded but not listed in TRT_API"
        assert majors and all(low <= m <= high for m in majors), dotted
    # a name some supported release lacks must carry a guard
    for cls, names in api_driver.TRT_API.items():
        for name in names:
            dotted = f"{cls}.{name}" if cls else name
            if any(not _has(s, cls, name) for s in SURFACES.values()):
                assert dotted in api_driver.TRT_API_MAJORS or cls in api_driver.TRT_API_MAJORS, dotted


def test_a_name_a_release_lacks_fails_the_check() -> None:
    api = {"": ("Builder",), "ICudaEngine": ("get_binding_index",), "IBuilderConfig": ("max_workspace_size",)}
    later = [v for v in SURFACES if _major(v) >= 10]
    assert missing(api, {}) == sorted(f"{v}: {n}" for v in later
                                      for n in ("ICudaEngine.get_binding_index", "IBuilderConfig.max_workspace_size"))
    assert "11.4.0.106: BuilderFlag.FP16" in missing({"BuilderFlag": ("FP16",)}, {})
    assert missing({"BuilderFlag": ("FP16",)}, {"BuilderFlag.FP16": (8, 10)}) == []
    assert missing({"ICudaEngine": ("get_binding_index",)}, {"ICudaEngine.get_binding_index": (8, 10)}) \
        == ["10.16.1.11: ICudaEngine.get_binding_index", "10.4.0: ICudaEngine.get_binding_index"]


# -- (b) the code uses only what the driver lists ------------------------------------------------


def test_only_the_api_driver_imports_tensorrt() -> None:
    assert [p.name for p in _modules_using_tensorrt()] == ["api_driver.py"]


def test_the_code_uses_only_listed_names() -> None:
    for path in _modules_using_tensorrt():
        assert unlisted(path.read_text(), api_driver.TRT_API, api_driver.TRT_OBJECTS) == [], path


def test_every_listed_name_is_used() -> None:
    tree = ast.parse((PKG / "profiles/trt/api_driver.py").read_text())
    found = used(tree, api_driver.TRT_OBJECTS)
    stale = [f"{c}.{n}" if c else n for c, names in api_driver.TRT_API.items() for n in names if (c, n) not in found]
    assert stale == []


def test_the_scan_catches_unlisted_and_unreal_names() -> None:
    src = """
import tensorrt as trt
def f(engine, network, trt=trt):
    engine.get_binding_index("x")
    network.get_layer(0).precision
    trt.BuilderFlag.STRICT_TYPES
    engine.get_io_tensor_names()
"""
    found = unlisted(src, api_driver.TRT_API, api_driver.TRT_OBJECTS)
    assert "ICudaEngine.get_binding_index" in found and "BuilderFlag.STRICT_TYPES" in found
    assert "ICudaEngine.get_io_tensor_names" in found  # a guess no release has
    assert any(f.startswith("?.precision") for f in found)  # chained, untyped, but a TensorRT name


def test_trt_version_refuses_outside_the_range() -> None:
    for version in ("8.5.3", "9.3.0", "12.0.0", "", "abc"):
        with pytest.raises(HalpError, match=re.escape(f"TensorRT {version or 'unknown'} is not supported")):
            trt_version(SimpleNamespace(__version__=version))
