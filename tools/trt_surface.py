"""Write the Python-API surface of real TensorRT releases to ``tests/data/trt_surface/<version>.json``.

The TensorRT Python bindings wheels on PyPI (``tensorrt-bindings`` for 8.6, ``tensorrt-cu12-bindings``
for 10.x and 11.x) hold the compiled pybind11 module ``tensorrt.so`` but none of TensorRT's
libraries.  The module needs only a handful of C entry points from them (``createInferBuilder_INTERNAL``,
``createNvOnnxParser_INTERNAL``, ``getPluginRegistry``, ...: every TensorRT interface is reached
through virtual calls on objects those factories return), and pybind11 registers every class,
method, property and enum while the module initialises, without calling TensorRT.  So this tool:

1. downloads the bindings wheel for the running Python (``pip download --no-deps``) or takes a
   wheel path, and extracts it;
2. reads the module's ``DT_NEEDED`` libraries and undefined symbols (``readelf``/``nm``) and
   compiles stub libraries with those sonames whose functions return 0 (``cc``); nothing in the
   stubs is ever called while the surface is read;
3. imports the wheel's own package (its ``__init__.py`` adds ``__version__``, ``Logger.INFO`` ...,
   ``DataType.itemsize``, ``volume``, ``nptype``) in a subprocess with the stubs on
   ``LD_LIBRARY_PATH`` and walks it: classes with their public members (inherited ones included),
   which of those are properties, base classes, enum members (``__members__``) and functions;
4. checks the result against the binary: every name must occur among the module's strings (or in
   the wheel's ``__init__.py``), and a few facts every release is known by must hold (8.6 has
   ``Builder.build_engine`` and ``IExecutionContext.execute_async_v2``; 10.x and 11.x have neither,
   nor ``IBuilderConfig.max_workspace_size`` or ``ICudaEngine.get_binding_index``, and have
   ``set_memory_pool_limit``, ``build_serialized_network``, ``execute_async_v3``,
   ``set_tensor_address``, ``get_tensor_name``, ``num_io_tensors``).

The releases the tests hold the package to (``DEFAULT_RELEASES``):

* 8.6.1, the oldest supported release (the last one before the named-tensor-only 10.x API);
* 10.4.0, the last release that supports Volta (sm_70): the TensorRT 10.4.0 release notes say
  "NVIDIA Volta support (GPUs with compute capability 7.0) is deprecated starting with TensorRT
  10.0 and will be removed in TensorRT 10.5", and the 10.5.0 notes "NVIDIA Volta support ... has
  been removed starting with TensorRT 10.5"
  (https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/release-notes-10/10.4.0.html,
  .../release-notes-10/10.5.0.html);
* 10.16.1.11, the newest 10.x, and 11.4.0.106, the newest 11.x on PyPI (``pip index versions
  tensorrt-cu12-bindings`` when the surfaces were written).

Usage::

    python tools/trt_surface.py                      # the default releases, downloaded
    python tools/trt_surface.py 10.4.0 path/to/tensorrt_cu12_bindings-10.13.3.9-...whl
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tests" / "data" / "trt_surface"
DEFAULT_RELEASES = ("8.6.1", "10.4.0", "10.16.1.11", "11.4.0.106")

# Facts about the real releases, from their API references and migration guide, that the
# extraction must reproduce: (release major versions, "Class.member", present?).
KNOWN_FACTS: tuple[tuple[tuple[int, ...], str, bool], ...] = (
    ((8,), "Builder.build_engine", True),
    ((8,), "IExecutionContext.execute_async_v2", True),
    ((8,), "IBuilderConfig.max_workspace_size", True),
    ((8,), "ICudaEngine.get_binding_index", True),
    ((8, 10, 11), "IBuilderConfig.set_memory_pool_limit", True),
    ((8, 10, 11), "Builder.build_serialized_network", True),
    ((8, 10, 11), "IExecutionContext.execute_async_v3", True),
    ((8, 10, 11), "IExecutionContext.set_tensor_address", True),
    ((8, 10, 11), "ICudaEngine.get_tensor_name", True),
    ((8, 10, 11), "ICudaEngine.num_io_tensors", True),
    ((10, 11), "Builder.build_engine", False),
    ((10, 11), "IExecutionContext.execute_async_v2", False),
    ((10, 11), "IBuilderConfig.max_workspace_size", False),
    ((10, 11), "ICudaEngine.get_binding_index", False),
    ((10, 11), "ICudaEngine.num_bindings", False),
)

# Classes whose method signatures (from the bindings' own docstrings) the surface keeps: the ones a
# Python-API driver builds, times and inspects an engine with.
CORE_CLASSES = ("Builder", "IBuilderConfig", "INetworkDefinition", "ITensor", "ILayer", "IOptimizationProfile",
                "OnnxParser", "Runtime", "ICudaEngine", "IExecutionContext", "EngineInspector", "IProfiler",
                "IInt8Calibrator", "IInt8EntropyCalibrator2", "ILogger", "Logger", "IHostMemory")

# Run in the subprocess: import the wheel's package as ``tensorrt`` and print its surface.
_INTROSPECT = r'''
import json, re, sys
CORE = CORE_CLASSES
import tensorrt as trt

def is_enum(obj):
    return isinstance(obj, type) and isinstance(getattr(obj, "__members__", None), dict)

def public(name):
    return not name.startswith("_")

classes, enums, properties, bases, functions = {}, {}, {}, {}, []
seen = set()

def visit(qualname, cls):
    if id(cls) in seen:
        return
    seen.add(id(cls))
    if is_enum(cls):
        enums[qualname] = sorted(n for n in cls.__members__ if public(n))
        return
    names = sorted(n for n in dir(cls) if public(n))
    classes[qualname] = names
    props = []
    for n in names:
        for klass in cls.__mro__:
            if n in vars(klass):
                if isinstance(vars(klass)[n], property):
                    props.append(n)
                break
    if props:
        properties[qualname] = props
    own = [b.__name__ for b in cls.__bases__ if b.__module__.startswith("tensorrt")]
    if own:
        bases[qualname] = own
    for n in names:
        attr = getattr(cls, n)
        if isinstance(attr, type) and attr.__module__.startswith("tensorrt"):
            nested = attr.__qualname__ if "." in attr.__qualname__ else f"{qualname}.{n}"
            visit(nested, attr)

for name in sorted(dir(trt)):
    if not public(name):
        continue
    obj = getattr(trt, name)
    if isinstance(obj, type):
        if obj.__module__.startswith("tensorrt"):
            visit(name, obj)
    elif callable(obj) and getattr(obj, "__module__", "") and str(obj.__module__).startswith("tensorrt"):
        functions.append(name)
    elif callable(obj) and type(obj).__name__ == "builtin_function_or_method" and getattr(obj, "__self__", None) is not None and getattr(obj.__self__, "__name__", "").startswith("tensorrt"):
        functions.append(name)

signatures = {}
for qual in CORE:
    cls = getattr(trt, qual, None)
    if cls is None:
        continue
    for n in ["__init__"] + classes[qual]:
        if n in properties.get(qual, ()) or isinstance(getattr(cls, n, None), type):
            continue
        doc = getattr(getattr(cls, n, None), "__doc__", None) or ""
        sigs = []
        for line in doc.splitlines():
            m = re.match(r"^\s*(?:\d+\. )?(" + re.escape(n) + r"\(.*)$", line)
            if m and "*args, **kwargs" not in m.group(1):
                sig = re.sub(r"\b(?:tensorrt\.tensorrt|typing_extensions|typing|collections\.abc)\.", "", m.group(1))
                sigs.append(re.sub(r"\(self: \w+(?:, )?", "(", sig))
        if sigs:
            signatures[f"{qual}.{n}"] = sigs

json.dump({"version": str(trt.__version__), "classes": classes, "properties": properties,
           "bases": bases, "enums": enums, "functions": sorted(functions),
           "signatures": signatures}, sys.stdout)
'''


def _run(cmd: list[str], **kw: object) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return str(proc.stdout)


def download(version: str, dest: Path) -> Path:
    """The bindings wheel of ``version`` for this Python, from PyPI."""
    package = "tensorrt-bindings" if version.startswith("8.") else "tensorrt-cu12-bindings"
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
          f"{package}=={version}"])
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip downloaded no {package} {version} wheel into {dest}")
    return wheels[0]


def _module(tree: Path) -> Path:
    found = sorted(p for p in tree.rglob("tensorrt*.so") if p.parent.joinpath("__init__.py").is_file())
    if not found:
        raise SystemExit(f"no compiled tensorrt module in {tree}")
    return found[0]


def _stub_libraries(module: Path, libdir: Path) -> None:
    """Stub libraries for every TensorRT library the module links, defining its undefined symbols."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _run(["readelf", "-d", str(module)]))
    system = ("libc.", "libm.", "libdl.", "librt.", "libpthread.", "libstdc++.", "libgcc_s.", "ld-linux")
    ours = [lib for lib in needed if not lib.startswith(system)]
    symbols = []
    for line in _run(["nm", "-D", "--undefined-only", str(module)]).splitlines():
        parts = line.split()
        # versioned symbols (name@GLIBC_2.2.5) come from system libraries; Python's from the interpreter
        if len(parts) == 2 and parts[0] == "U" and "@" not in parts[1] and not re.match(r"_?Py", parts[1]):
            symbols.append(parts[1])
    source = libdir / "stub.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
    for lib in ours:
        _run(["cc", "-shared", "-fPIC", "-o", str(libdir / lib), f"-Wl,-soname,{lib}", str(source)])


def extract(wheel: Path) -> dict[str, object]:
    """The surface of one bindings wheel (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="trt-surface-") as tmp:
        work = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(work / "wheel")
        module = _module(work / "wheel")
        site = work / "site"
        shutil.copytree(module.parent, site / "tensorrt")
        libdir = work / "lib"
        libdir.mkdir()
        _stub_libraries(module, libdir)
        env = dict(os.environ, LD_LIBRARY_PATH=str(libdir), PYTHONPATH=str(site), PYTHONNOUSERSITE="1")
        script = _INTROSPECT.replace("CORE_CLASSES", repr(CORE_CLASSES))
        surface = json.loads(_run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n"
                                   + script], env=env, cwd=tmp))
        binary = module.read_bytes()
        init = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", (module.parent / "__init__.py").read_text()))
    check(surface, binary, init)
    return surface


def check(surface: dict, binary: bytes, init: set[str]) -> None:
    """Every name occurs in the binary (or the wheel's ``__init__.py``); the known facts hold.

    The linker merges string tails (``CONVOLUTION`` is the end of ``DECONVOLUTION``), so a name
    counts as found when it ends a string or a word somewhere in the binary."""
    names: set[str] = set(surface["functions"])
    for qual, members in {**surface["classes"], **surface["enums"]}.items():
        names.update(qual.split("."))
        names.update(members)

    def in_binary(name: str) -> bool:
        return re.search(re.escape(name.encode()) + rb"(?![A-Za-z0-9_])", binary) is not None

    # members every Python object has (mro, name, value of enums) are not the module's strings
    missing = sorted(n for n in names if n not in init and n not in {"mro", "name", "value"}
                     and not in_binary(n))
    if missing:
        raise SystemExit(f"{surface['version']}: names not in the binary: {missing[:20]}")
    major = int(surface["version"].split(".")[0])
    wrong = []
    for majors, dotted, present in KNOWN_FACTS:
        if major in majors:
            cls, member = dotted.split(".")
            if (member in surface["classes"].get(cls, ())) != present:
                wrong.append(f"{dotted} {'missing' if present else 'present'}")
    for cls in ("Builder", "IBuilderConfig", "INetworkDefinition", "OnnxParser", "ICudaEngine",
                "IExecutionContext", "Runtime", "Logger", "IProfiler"):
        if cls not in surface["classes"]:
            wrong.append(f"class {cls} missing")
    if wrong:
        raise SystemExit(f"{surface['version']}: extraction disagrees with known facts: {wrong}")


def write(surface: dict, out_dir: Path = OUT_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{surface['version']}.json"
    # one class per line: small diffs, small files
    lines = [f'{{"version": {json.dumps(surface["version"])},']
    for key in ("classes", "properties", "bases", "enums", "signatures"):
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(surface[key].items()))
        lines.append(f'"{key}": {{\n{body}\n}},')
    lines.append(f'"functions": {json.dumps(surface["functions"])}}}')
    path.write_text("\n".join(lines) + "\n")
    json.loads(path.read_text())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("releases", nargs="*", default=list(DEFAULT_RELEASES),
                        help="versions to download from PyPI, or paths to bindings wheels")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--wheels", type=Path, help="download into (and reuse wheels from) this folder")
    args = parser.parse_args(argv)
    for cmd in ("cc", "nm", "readelf"):
        if shutil.which(cmd) is None:
            raise SystemExit(f"{cmd} is needed (a C compiler and binutils)")
    with tempfile.TemporaryDirectory(prefix="trt-wheels-") as tmp:
        cache = args.wheels or Path(tmp)
        for release in args.releases:
            given = Path(release)
            wheel = given if given.suffix == ".whl" else download(release, cache)
            path = write(extract(wheel), args.out)
            print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
