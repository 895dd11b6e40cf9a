"""Fingerprints: what a task depends on, as one sha256 (pipeline/markers.py keeps it in the task's marker).

A task's fingerprint covers its arguments (the configuration it uses, in a canonical JSON form that does not
depend on where --out lives), the checksums of the output-tree files it reads, the identity of the upstream files
it reads, the files' schemas, and its code: the source of every function, class and constant of the project
that the task's function reaches by name, followed from one to the next. An upgrade that changes what a stage
computes therefore re-runs what that stage produced, and nothing else; an edit of the CLI re-runs nothing.
"""

import ast
import hashlib
import inspect
import json
import sys
import types
from dataclasses import dataclass, fields, is_dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from manifests import schemas
from manifests.layout import Layout
from stages.paths import PROJECT_ROOT

PACKAGES = ("pipeline", "stages", "manifests", "reference")

# The files' schemas are part of every fingerprint: outputs of an older format are rewritten, never read.
FORMATS = hashlib.sha256("".join(str(value) for _, value in sorted(vars(schemas).items())
                                 if isinstance(value, pa.Schema)).encode()).hexdigest()


@dataclass(frozen=True)
class Shared:
    """A large argument (a configuration with thousands of rows) put in Ray's object store once, not shipped
    with every task; it enters fingerprints by its digest."""

    ref: Any
    digest: str


def canonical(value: Any) -> Any:
    """A JSON-ready form of a task argument that depends on its content only (not on where --out lives); a
    function or a settings class counts by its code too."""
    if isinstance(value, Shared):
        return {"shared": value.digest}
    if isinstance(value, Layout):
        return "<out>"
    if isinstance(value, pa.Schema):
        return str(value)
    if isinstance(value, pa.Table):
        return {"schema": str(value.schema), "columns": canonical(value.to_pydict())}
    if is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"__class__": f"{cls.__qualname__}@{code_digest(cls)}",
                **{f.name: canonical(getattr(value, f.name)) for f in fields(value)}}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(canonical(v) for v in value)
    if isinstance(value, Path):  # the project's own data files count by their place in it, wherever it lives
        return f"<project>/{value.relative_to(PROJECT_ROOT)}" if value.is_relative_to(PROJECT_ROOT) else str(value)
    if isinstance(value, bytes):
        return value.hex()
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}@{code_digest(value)}"
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(canonical(value), sort_keys=True).encode()).hexdigest()


def _project_module(obj: Any) -> str | None:
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    return name if isinstance(name, str) and name.split(".")[0] in PACKAGES else None


def _unwrapped(obj: Any) -> Any:
    """The Python function behind a wrapper: a Numba dispatcher's, a `functools.cache`'s (a cached loader, such as
    the tokenizer's, would otherwise hide its code), a method's, a property's or a cached property's."""
    obj = getattr(obj, "py_func", obj)
    obj = getattr(obj, "__func__", getattr(obj, "fget", obj))
    if isinstance(obj, cached_property):
        obj = obj.func
    return inspect.unwrap(obj) if callable(obj) else obj


def _code_names(code: types.CodeType) -> set[str]:
    """Every global or attribute name a code object and the functions nested in it use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):  # made at run time: its name is what can be told of it
        return f"<no source: {getattr(obj, '__qualname__', type(obj).__name__)}>"


@cache
def code_digest(root: Any) -> str:
    """sha256 of the source of `root` (a function or class) and of every project function, class and constant it
    reaches by name: globals of its module, attributes of project modules it names, elements of the containers it
    names (the readers' registry), base classes and compiled kernels (their Python source). Computed once per
    process."""
    seen: set[int] = set()
    parts: list[str] = []
    stack = [root]
    while stack:
        obj = stack.pop()
        obj = _unwrapped(obj)
        container = isinstance(obj, list | tuple | dict | set | frozenset)
        if id(obj) in seen or _project_module(obj) is None and not container:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            stack += [v for v in obj.values() if _project_module(v)]
            continue
        if isinstance(obj, list | tuple | set | frozenset):
            stack += [v for v in obj if _project_module(v)]
            continue
        if isinstance(obj, types.FunctionType):
            parts.append(f"{obj.__module__}.{obj.__qualname__}:{_source(obj)}")
            uses = [(obj.__code__, obj.__globals__)]
        elif isinstance(obj, type):
            parts.append(f"{obj.__module__}.{obj.__qualname__}:{_source(obj)}")
            members = [_unwrapped(member) for member in vars(obj).values()]
            uses = [(f.__code__, f.__globals__) for f in members if isinstance(f, types.FunctionType)]
            stack += [base for base in obj.__mro__[1:] if _project_module(base)]
        else:
            continue
        for code, scope in uses:
            stack += _reached(code, scope, parts)
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


def _reached(code: types.CodeType, scope: dict, parts: list[str]) -> list[Any]:
    """What a code object reaches by name in its module's globals (and in project modules it names): functions,
    classes, kernels and containers to follow; constants go into `parts`."""
    names = _code_names(code)
    found: list[Any] = []
    for name in sorted(names & scope.keys()):
        value = scope[name]
        if isinstance(value, types.ModuleType):
            if _project_module(value):
                for attr in sorted(names):
                    if hasattr(value, attr):
                        found += _follow(value.__name__, attr, getattr(value, attr), parts)
        else:
            found += _follow(scope.get("__name__", ""), name, value, parts)
    return found


def _follow(module: str, name: str, value: Any, parts: list[str]) -> list[Any]:
    """A global a task reaches: code to follow, or a constant to count. A container counts by the statement that
    assigns it in its module (a cache a module fills at run time, such as one DuckDB connection per process, must
    not change the digest), or by its content when it was imported from elsewhere."""
    if isinstance(value, types.FunctionType | type) or hasattr(value, "py_func") or hasattr(value, "__wrapped__"):
        return [value]
    if isinstance(value, dict | list | tuple | set | frozenset):
        parts.append(f"{module}.{name}={_assignments(module).get(name) or json.dumps(_constant(value))}")
        return [value]
    if value is not None and isinstance(value, int | float | str | bytes | bool):
        parts.append(f"{module}.{name}={value!r}")
    return []


@cache
def _assignments(module: str) -> dict[str, str]:
    """name -> source of the top-level statement that assigns it, for a module of the project."""
    try:
        source = inspect.getsource(sys.modules[module])
    except (KeyError, OSError, TypeError):
        return {}
    found = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign | ast.AugAssign) else []
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name):
                    found[leaf.id] = found.get(leaf.id, "") + (ast.get_source_segment(source, node) or "")
    return found


def _constant(value: Any) -> Any:
    """A module constant's content in a form that is the same in every process: sequences sorted too, as some are
    made from sets (whose order changes with each process's string hashing); objects other than plain data count
    by their type."""
    if isinstance(value, dict):
        return {str(k): _constant(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return sorted(map(json.dumps, map(_constant, value)))
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _constant(getattr(value, f.name)) for f in fields(value)}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes | Path):
        return str(value)
    return type(value).__qualname__
