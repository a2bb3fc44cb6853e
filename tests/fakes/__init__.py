"""Test doubles built from a surface: the public names of a real module's classes, extracted from
the real binary (``tests/data/trt_surface``, ``tools/trt_surface.py``).

:func:`surface_class` turns an implementation class into one that exposes exactly a release's
names: the implemented ones (checked: each exists in some release, properties are properties and
parameter names are those of one of the release's real signatures), the real ones not implemented
(raising ``NotImplementedError``), and nothing else.  ``tensorrt_fake`` is the ``tensorrt`` double.
"""
from __future__ import annotations

import inspect
from typing import Any


class _EnumValue:
    """A pybind11 enum member: ``name``, ``value``, ``int()``."""

    def __init__(self, enum: str, name: str, value: int) -> None:
        self.name, self.value, self._enum = name, value, enum

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __repr__(self) -> str:
        return f"<{self._enum.rsplit('.', 1)[-1]}.{self.name}: {self.value}>"


def make_enum(qualname: str, members: list[str]) -> type:
    values = {name: _EnumValue(qualname, name, i) for i, name in enumerate(members)}
    return type(qualname.rsplit(".", 1)[-1], (), {**values, "__members__": values, "__module__": "tensorrt"})


def _params(sig: str) -> list[tuple[str, bool]]:
    """(name, has a default) of each parameter of a signature line ``name(a: T, b: U = x) -> R``."""
    depth, body, start = 0, "", sig.index("(")
    for i, ch in enumerate(sig[start:], start):
        depth += ch in "([<" and 1 or (ch in ")]>" and -1 or 0)
        if depth == 0:
            body = sig[start + 1: i]
            break
    parts, depth, cur = [], 0, ""
    for ch in body:
        depth += ch in "([<" and 1 or (ch in ")]>" and -1 or 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [(p.split(":")[0].split("=")[0].strip(), "=" in p) for p in parts if p.strip()]


def _fits(ours: list[str], real: list[tuple[str, bool]]) -> bool:
    """Our parameters are the real ones, or a prefix of them with the rest defaulted."""
    return [n for n, _ in real[: len(ours)]] == ours and all(d for _, d in real[len(ours):])


def _members(impl: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for klass in reversed(impl.__mro__[:-1]):
        out.update({k: v for k, v in vars(klass).items()
                    if k not in ("__dict__", "__weakref__", "__module__", "__qualname__", "__doc__")})
    return out


def _public(impl: type) -> dict[str, Any]:
    return {k: v for k, v in _members(impl).items() if not k.startswith("_")}


def _check(name: str, impl: type, surf: dict[str, Any], every: set[str]) -> None:
    """Every public name of ``impl`` is a real member in some release; properties are properties;
    parameter names are those of a real signature of this release."""
    invented = sorted(set(_public(impl)) - every)
    assert not invented, f"fake {name} defines names no TensorRT release has: {invented}"
    props = set(surf["properties"].get(name, ()))
    for attr, value in _members(impl).items():
        if attr != "__init__" and attr not in surf["classes"].get(name, ()):
            continue
        if attr != "__init__":
            assert isinstance(value, property) == (attr in props), f"fake {name}.{attr}: property mismatch"
        sigs = surf["signatures"].get(f"{name}.{attr}")
        if sigs and inspect.isfunction(value):
            ours = list(inspect.signature(value).parameters)[1:]
            assert any(_fits(ours, _params(s)) for s in sigs), f"fake {name}.{attr}{ours} vs real {sigs}"


def _unmodelled(what: str, cls: str, attr: str, prop: bool) -> Any:
    def fail(*_: Any, **__: Any) -> Any:
        raise NotImplementedError(f"the fake {what} does not model {cls}.{attr}")
    return property(fail) if prop else fail


def surface_class(name: str, impl: type, surf: dict[str, Any], every: list[dict[str, Any]], module: Any,
                  extra: dict[str, Any], what: str) -> type:
    """``impl`` as the class ``name`` of ``surf``: exactly its public names (``extra`` adds real
    names set outside the binary), private helpers kept, ``_trt`` pointing at ``module``."""
    _check(name, impl, surf, {m for s in every for m in s["classes"].get(name, ())})
    members, props = surf["classes"][name], set(surf["properties"].get(name, ()))
    public = _public(impl)
    ns = {k: v for k, v in _members(impl).items() if k.startswith("_")}
    ns.update({"__module__": "tensorrt", "__doc__": impl.__doc__, "_trt": module})
    for attr in members:  # exactly the release's names: modelled, or failing loudly
        ns[attr] = public[attr] if attr in public else _unmodelled(what, name, attr, attr in props)
    ns.update(extra)
    cls = type(name, (), ns)  # no base class: what this release lacks is absent
    exposed = {a for a in dir(cls) if not a.startswith("_")}
    assert exposed == set(members), f"fake {what} {name}: {sorted(exposed ^ set(members))}"
    return cls
