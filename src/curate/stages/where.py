"""Safe filter expressions over score columns: ``clip_sim >= 0.3 and (aesthetic > 4.5 or motion < 2)``.

The expression is parsed with :mod:`ast` and compiled into numpy operations on a whitelist of node
types: comparisons (chained too), ``and``/``or``/``not``, + - * /, unary minus, numbers, strings,
``True``/``False``, column names, and the functions ``abs``, ``isnull``, ``notnull``. Anything else
(attribute access, subscripts, other calls, lambdas, comprehensions) is refused before evaluation:
no user code ever runs. A comparison with a missing (null) value is false.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping

import numpy as np

from curate.errors import CurateError

_CMP = {ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_FUNCS = {"abs": np.abs, "isnull": lambda x: _isnull(x), "notnull": lambda x: ~_isnull(x)}


def _isnull(x):
    x = np.asarray(x)
    if x.dtype == object:
        return np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in x], dtype=bool)
    return np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, dtype=bool)


class Where:
    """A compiled expression: ``columns`` it reads, ``mask(columns_dict) -> bool array``."""

    def __init__(self, source: str, known_columns: list[str] | None = None) -> None:
        self.source = source
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as e:
            raise CurateError(f"--where {source!r}: syntax error ({e.msg})") from None
        self.columns: list[str] = []
        self._fn = self._compile(tree.body)
        if known_columns is not None:
            unknown = [c for c in self.columns if c not in known_columns]
            if unknown:
                raise CurateError(f"--where {source!r}: unknown column(s) {unknown}; score columns: "
                                  f"{', '.join(c for c in known_columns if c != 'clip_id')}")

    def mask(self, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self._fn(cols)
        out = np.asarray(out)
        if out.dtype != bool:
            raise CurateError(f"--where {self.source!r} must be a condition (a comparison), not a value")
        return out

    def _compile(self, node: ast.AST) -> Callable:
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v) for v in node.values]
            op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            return lambda c: _reduce(op, [p(c) for p in parts])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            inner = self._compile(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda c: np.logical_not(inner(c))
            return (lambda c: -inner(c)) if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.Compare) and all(type(o) in _CMP for o in node.ops):
            items = [self._compile(node.left), *[self._compile(x) for x in node.comparators]]
            ops = [_CMP[type(o)] for o in node.ops]

            def compare(c):
                vals = [f(c) for f in items]
                res = None
                for op, a, b in zip(ops, vals, vals[1:]):
                    r = _safe_cmp(op, a, b)
                    res = r if res is None else np.logical_and(res, r)
                return res

            return compare
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            a, b, op = self._compile(node.left), self._compile(node.right), _BIN[type(node.op)]
            return lambda c: op(_num(a(c)), _num(b(c)))
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            v = node.value
            return lambda c: v
        if isinstance(node, ast.Name):
            if node.id in ("True", "False"):
                v = node.id == "True"
                return lambda c: v
            name = node.id
            if name not in self.columns:
                self.columns.append(name)
            return lambda c: c[name]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                and len(node.args) == 1 and not node.keywords):
            fn, arg = _FUNCS[node.func.id], self._compile(node.args[0])
            return lambda c: fn(_num(arg(c)) if node.func.id == "abs" else arg(c))
        what = type(node).__name__
        raise CurateError(f"--where {self.source!r}: {what} is not allowed (use column names, numbers, "
                          "comparisons, and/or/not, + - * /, abs(), isnull(), notnull())")


def _reduce(op, arrays):
    out = arrays[0]
    for a in arrays[1:]:
        out = op(out, a)
    return out


def _num(x):
    x = np.asarray(x)
    return x.astype(np.float64) if x.dtype == object else x


def _safe_cmp(op, a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == object or b.dtype == object:  # strings / nullable: None never compares true
        a_l = a if a.shape else np.full(max(np.shape(b) or (1,)), a.item(), dtype=object)
        b_l = b if b.shape else np.full(len(a_l), b.item(), dtype=object)
        return np.array([x is not None and y is not None and bool(op(x, y)) for x, y in zip(a_l, b_l)], dtype=bool)
    r = op(a, b)
    nan = np.zeros(np.shape(r), dtype=bool)
    if a.dtype.kind == "f":
        nan |= np.isnan(a)
    if b.dtype.kind == "f":
        nan |= np.isnan(b)
    return np.asarray(r & ~nan) if np.shape(r) else r
