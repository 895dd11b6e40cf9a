"""Typed settings: dataclasses whose fields carry `help`, loaded from YAML mappings with every key checked.

Each stage declares its settings as a frozen dataclass with `setting(default, help)` fields (dolma's shape);
`load(cls, data, where)` turns a YAML mapping into it: unknown keys, wrong types, missing keys and failed checks
are a ConfigError naming the file and the dotted key (and, for a misspelt key, the closest valid one). No number
is NaN, infinite or an integer beyond 64 bits, and a field's range (`setting(..., ge=1)`) holds for every number in
its value.
"""

import difflib
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, NewType, TypeVar, get_args, get_origin, get_type_hints

# A local path (relative ones resolve against the file that names them) or an fsspec URL, kept as given.
Location = NewType("Location", str)
T = TypeVar("T")
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1  # the integers NumPy and Arrow columns hold
SEED_MAX = 2**63 - 1  # seeds go into the manifests' int64 columns (run.seed)


class ConfigError(ValueError):
    """Bad usage or configuration: the CLI prints it as one line and exits with status 2. `where` and `reason`:
    the setting at fault and what is wrong with it, when the error names one (so that the value a `--set` option
    gave is blamed on the option, not on the file)."""

    def __init__(self, message: str, where: "Where | None" = None, reason: str = "") -> None:
        super().__init__(message)
        self.where, self.reason = where, reason


@dataclass(frozen=True)
class Range:
    """Bounds of a number: `ge`/`le` inclusive, `gt`/`lt` exclusive (pydantic's names)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        if (self.ge, self.gt) != (None, None) and (self.le, self.lt) != (None, None):
            low = f"[{self.ge}" if self.ge is not None else f"({self.gt}"
            high = f"{self.le}]" if self.le is not None else f"{self.lt})"
            return f"in {low}, {high}"
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {bound}" for op, bound in bounds if bound is not None)


def setting(default: Any = MISSING, help: str = "", factory: Any = MISSING, *,  # noqa: A002 - dolma's name
            ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with its help text and the range of its numbers (shown by `mmcorpus config fields`)."""
    metadata: dict[str, Any] = {"help": help}
    if (ge, gt, le, lt) != (None, None, None, None):
        metadata["range"] = Range(ge, gt, le, lt)
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def number_problem(number: float) -> str | None:
    """Why no setting may hold this number, or None: NaN and infinities compare false with every threshold and
    integers beyond 64 bits overflow NumPy and Arrow, both far from the file or option that gave them."""
    if isinstance(number, int):
        return None if INT64_MIN <= number <= UINT64_MAX else "must fit in 64 bits"
    return None if math.isfinite(number) else "must be a finite number"


@dataclass(frozen=True)
class Where:
    """Where a value comes from: the file that named it and the dotted key inside it."""

    file: Path | str
    keys: tuple[str, ...] = ()

    def __truediv__(self, key: object) -> "Where":
        return Where(self.file, (*self.keys, str(key)))

    @property
    def base(self) -> Path:
        """The folder relative paths resolve against."""
        return Path(self.file).parent if isinstance(self.file, Path) else Path.cwd()

    def error(self, message: str) -> ConfigError:
        key = ".".join(self.keys)
        return ConfigError(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}", self, message)


def closest(name: str, known: typing.Iterable[str]) -> str:
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {found[0]!r}?)" if found else f" (known: {', '.join(known)})"


def check_keys(data: dict, known: typing.Iterable[str], where: Where) -> None:
    known = list(known)
    for key in data:
        if str(key) not in known:
            raise (where / key).error(f"unknown key{closest(str(key), known)}")


def load(cls: type[T], data: object, where: Where) -> T:
    """A `cls` instance from a YAML mapping; every key known, every value of its field's type."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise where.error(f"expected a mapping, got {_kind(data)}")
    hints, settable = _settable(cls)
    if not data.keys() <= hints.keys():
        check_keys(data, [f.name for f in settable], where)
    values = {}
    for f in settable:
        if f.name in data:
            values[f.name] = convert(hints[f.name], data[f.name], where / f.name)
            if "range" in f.metadata:
                check_range(values[f.name], f.metadata["range"], where / f.name)
        elif f.default is MISSING and f.default_factory is MISSING:
            help_text = f.metadata.get("help")
            raise (where / f.name).error("missing" + (f" ({help_text})" if help_text else ""))
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise where.error(str(error)) from None


def check_range(value: object, bounds: Range, where: Where) -> None:
    """Every number in `value` (itself, a mapping's values, a list's items) within `bounds`."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_range(item, bounds, where / key)
    elif isinstance(value, list | tuple | frozenset):
        for i, item in enumerate(value):
            check_range(item, bounds, where / i)
    elif isinstance(value, int | float) and value not in bounds:
        raise where.error(f"must be {bounds}, got {value!r}")


@cache
def _settable(cls: type) -> tuple[dict[str, Any], list]:
    """The fields a YAML mapping may set (derived ones are filled by the loader) and their types."""
    settable = [f for f in fields(cls) if f.init and not f.metadata.get("derived")]
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in settable}, settable


def convert(tp: Any, value: object, where: Where) -> Any:
    """`value` as type `tp`: dataclasses, optionals, literals, lists, tuples, dicts, paths and scalars."""
    if (tp is float and type(value) is float and math.isfinite(value) or tp is str and type(value) is str
            or tp is int and type(value) is int and INT64_MIN <= value <= UINT64_MAX):
        return value  # the common case, first
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return convert(options[0], value, where)
        errors = []
        for option in options:
            try:
                return convert(option, value, where)
            except ConfigError as error:
                errors.append(error)
        raise errors[-1]
    if value is None:
        raise where.error("must not be null")
    if is_dataclass(tp):
        return load(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise where.error(f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if tp is Location:
        return _location(value, where)
    if tp is Path:
        if not isinstance(value, str):
            raise where.error(f"expected a path, got {_kind(value)}")
        return (where.base / os.path.expanduser(value)).resolve()
    if origin in (list, tuple, frozenset) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise where.error(f"expected a list, got {_kind(value)}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, where / i) for i, v in enumerate(value))
        if origin is tuple and args:
            if len(value) != len(args):
                raise where.error(f"expected {len(args)} values, got {len(value)}")
            return tuple(convert(a, v, where / i) for i, (a, v) in enumerate(zip(args, value, strict=True)))
        items = [convert(args[0], v, where / i) if args else v for i, v in enumerate(value)]
        return (origin or tp)(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise where.error(f"expected a mapping, got {_kind(value)}")
        if not args:
            return dict(value)
        return {convert(args[0], k, where): convert(args[1], v, where / k) for k, v in value.items()}
    return _scalar(tp, value, where)


def _scalar(tp: type, value: object, where: Where) -> object:
    if tp is bool:
        if not isinstance(value, bool):
            raise where.error(f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise where.error(f"expected text, got {_kind(value)}")
        return str(value)
    if tp in (int, float):
        if isinstance(value, bool):
            raise where.error(f"expected a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value  # YAML reads 2.3e12 as text
        except ValueError:
            raise where.error(f"expected a number, got {value!r}") from None
        if not isinstance(number, int | float):
            raise where.error(f"expected a number, got {_kind(value)}")
        if problem := number_problem(number):
            raise where.error(f"{problem}, got {value!r}")
        if tp is int:
            if isinstance(number, float) and not number.is_integer():
                raise where.error(f"expected a whole number, got {value!r}")
            return int(number)
        return float(number)
    raise where.error(f"unsupported setting type {tp}")


def _location(value: object, where: Where) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(f"expected a path or URL, got {_kind(value)}")
    if "://" in value:
        return value
    return str((where.base / os.path.expanduser(value)).resolve())


def _kind(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.60}"


def plain(value: object) -> object:
    """A JSON/YAML-ready copy of a settings value (dataclasses as mappings, paths as text, sets sorted)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value) if f.repr}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every setting of a dataclass, nested ones expanded."""
    rows = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        if not f.init or f.metadata.get("derived"):
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        nested = tp if is_dataclass(tp) else None
        if nested:
            rows.append((key, nested.__name__, "", f.metadata.get("help", "")))
            rows += describe(nested, key + ".")
            continue
        if f.default is not MISSING:
            default = repr(f.default)
        elif f.default_factory is not MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        bounds = f.metadata.get("range")
        help_text = f.metadata.get("help", "") + (f" (must be {bounds})" if bounds else "")
        rows.append((key, _type_name(tp), default, help_text))
    return rows


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(map(repr, get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


