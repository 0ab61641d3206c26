"""Options declared once, typed and validated: :class:`Opt`, its coercion and its JSON Schema.

An :class:`Opt` is one keyword argument as every shell shows it: the CLI option (``curate.cli``), a key of
a `curate run` YAML section (:func:`coerce` parses and checks what YAML gives) and an Airflow ``Param``
(:func:`json_schema`). The stages' declarations are :mod:`curate.stages.options`; this leaf holds only the
machinery, so that plugins (encoders, captioners) can declare their ``-o`` options the same way.

It imports nothing heavy (the Airflow DAG processor imports it on every parse).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from curate.errors import CurateError

__all__ = ["KINDS", "OPTION_VALUE", "Opt", "coerce", "json_schema", "parse_size"]

KINDS = ("int", "float", "str", "bool", "size", "list", "dict", "dicts")


def parse_size(v: Any) -> int | None:
    """Bytes from ``123``, ``"500M"``, ``"2G"``, ``"64KB"`` (binary multiples); None/"" -> None."""
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise ValueError(v)
    if isinstance(v, (int, float)):
        return int(v)
    s = str(v).strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s[-1:] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    if s.endswith("B") and s[-2:-1] in mult:
        return int(float(s[:-2]) * mult[s[-2]])
    return int(s)


@dataclass(frozen=True)
class Opt:
    """One keyword argument of a stage function, as every shell shows it.

    ``kind``: int, float, str, bool, size (bytes; also ``500M``), list (of strings; repeatable on the
    command line), dict (``-o key=value`` on the command line, an object in YAML/JSON), dicts (an
    object of objects, e.g. options per scorer).
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    flag: str | None = None  # the CLI spelling; default --name-with-dashes
    short: str | None = None
    metavar: str | None = None
    invert: bool = False  # the CLI flag sets the option to False (--no-local -> allow_local=False)
    required: bool = False  # the CLI asks for it (YAML and DAG use the default)
    nullable: bool | None = None  # None: when the default is None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    pattern: str | None = None  # strings, and the items of a list
    max_length: int | None = None  # strings, and the items of a list
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    open_choices: bool = False  # choices are the built-in ones; the CLI and YAML take others (plugins, paths)
    column: str | None = None  # a filter threshold: keep rows with <column> <op> value
    op: str | None = None
    into: str | None = None  # merged into this dict option under its own name (--threshold -> options)
    one_str: bool = False  # a list option given one string passes it on as is (the stage takes str | list)
    cli: bool = True
    yaml: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} is not one of {KINDS}")

    @property
    def is_nullable(self) -> bool:
        return self.default is None if self.nullable is None else self.nullable

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def choice_list(self) -> list[str] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)


# ----------------------------------------------------------------------------- coercion
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "size": "a size (bytes, or 500M / 2G)", "list": "a list of strings",
               "dict": "a mapping of key: value", "dicts": "a mapping of name: {key: value}"}


def _bad(where: str, o: Opt, value: Any, why: str | None = None) -> CurateError:
    """``where`` ends with the option's label (``config.yaml: filter.min_sim``, ``--min-sim``)."""
    return CurateError(f"{where}: {why or 'expected ' + _TYPE_WORDS[o.kind]}, got {value!r}")


def _scalar(o: Opt, v: Any, where: str) -> Any:
    k = o.kind
    try:
        if k == "bool":
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return v.strip().lower() in ("true", "yes", "on", "1")
            raise ValueError(v)
        if isinstance(v, bool):  # True is an int in Python, never a number here
            raise ValueError(v)
        if k == "int":
            if isinstance(v, float) and not v.is_integer():
                raise ValueError(v)
            return int(v) if isinstance(v, (int, float)) else int(str(v).strip())
        if k == "float":
            x = float(v) if isinstance(v, (int, float)) else float(str(v).strip())
            if math.isnan(x):
                raise ValueError(v)
            return x
        if k == "size":
            return parse_size(v)
        if k == "str":
            if isinstance(v, (dict, list, tuple)):
                raise ValueError(v)
            return str(v)
    except (TypeError, ValueError):
        raise _bad(where, o, v) from None
    raise AssertionError(k)


def _check_str(o: Opt, s: str, where: str, strict_choices: bool) -> None:
    if o.max_length is not None and len(s) > o.max_length:
        raise _bad(where, o, s[:40] + "...", f"longer than {o.max_length} characters")
    choices = o.choice_list()
    if choices is not None and strict_choices and s not in choices:
        raise _bad(where, o, s, f"not one of {', '.join(choices)}")
    if o.pattern and not (choices and s in choices) and not re.fullmatch(o.pattern, s):
        raise _bad(where, o, s, "use letters, digits, '_', '-' and '.', starting with a letter or digit")


def coerce(o: Opt, value: Any, where: str | None = None) -> Any:
    """``value`` as the stage function takes it, or a :class:`CurateError` that names the option
    (``where``: how the error names it, default ``o.name``).

    Strings are parsed by type (YAML reads ``1e-3`` as a string), constraints (minimum, pattern, closed
    choices, length) are checked; ``None`` is accepted where the option may be unset.
    """
    where = o.name if where is None else where
    if value is None:
        if o.is_nullable or o.kind in ("list", "dict", "dicts"):
            return None
        raise _bad(where, o, value, f"must be {_TYPE_WORDS[o.kind]} (it cannot be null)")
    if o.kind == "list":
        if isinstance(value, str) and o.one_str:
            _check_str(o, value, where, strict_choices=not o.open_choices)
            return value
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise _bad(where, o, value)
        out = []
        for x in items:
            if isinstance(x, (dict, list, tuple)) or x is None:
                raise _bad(where, o, value)
            out.append(str(x))
            _check_str(o, out[-1], where, strict_choices=not o.open_choices)
        return out
    if o.kind == "dict":  # values as given (the plugin reads its options; -o gives strings)
        if not isinstance(value, Mapping):
            raise _bad(where, o, value)
        return {str(k): v for k, v in value.items()}
    if o.kind == "dicts":
        if not isinstance(value, Mapping) or any(not isinstance(v, Mapping) and v is not None
                                                 for v in value.values()):
            raise _bad(where, o, value)
        return {str(k): dict(v or {}) for k, v in value.items()}
    x = _scalar(o, value, where)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        if o.minimum is not None and x < o.minimum:
            raise _bad(where, o, value, f"must be >= {o.minimum:g}")
        if o.exclusive_minimum is not None and x <= o.exclusive_minimum:
            raise _bad(where, o, value, f"must be > {o.exclusive_minimum:g}")
        if o.maximum is not None and x > o.maximum:
            raise _bad(where, o, value, f"must be <= {o.maximum:g}")
    if isinstance(x, str):
        _check_str(o, x, where, strict_choices=not o.open_choices)
    return x


# ----------------------------------------------------------------------------- JSON Schema (Airflow Params)
_JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "size": "integer"}
#: the values an options mapping may hold (CLI -o values are strings; JSON may give numbers and booleans)
OPTION_VALUE = {"type": ["string", "number", "boolean"]}


def json_schema(o: Opt, *, nullable: bool | None = None, with_default: bool = True) -> dict[str, Any]:
    """The JSON Schema of one option: type, constraints, description and (``with_default``) default.

    Choices are an ``enum`` here even where the CLI and YAML take other values (a DAG run may not name
    files or plugins beyond the built-in ones).
    """
    collection = o.kind in ("list", "dict", "dicts")  # unset = empty, never null
    nullable = (o.is_nullable and not collection) if nullable is None else nullable
    s: dict[str, Any]
    if o.kind == "list":
        items: dict[str, Any] = {"type": "string"}
        if o.pattern:
            items["pattern"] = o.pattern
        if o.max_length is not None:
            items["maxLength"] = o.max_length
        s = {"type": "array", "items": items}
    elif o.kind == "dict":
        s = {"type": "object", "additionalProperties": OPTION_VALUE}
    elif o.kind == "dicts":
        s = {"type": "object", "additionalProperties": {"type": "object"}}
    else:
        s = {"type": _JSON_TYPES[o.kind]}
        for key, v in (("minimum", o.minimum), ("maximum", o.maximum), ("exclusiveMinimum", o.exclusive_minimum),
                       ("maxLength", o.max_length)):
            if v is not None:
                s[key] = v
        choices = o.choice_list()
        if choices is not None:
            s["enum"] = [*choices, *([None] if nullable else [])]
        elif o.pattern:
            s["pattern"] = o.pattern
    if nullable:
        s["type"] = ["null", s["type"]]
    if with_default:
        d = o.default
        if collection:
            d = list(d or ()) if o.kind == "list" else dict(d or {})
        s["default"] = d
    s["description"] = o.help
    return s
