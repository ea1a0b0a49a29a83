"""The property-range filter language of ``/api/search``: parsed and validated, never evaluated.

    excess_corr>0.3&kurt>5
    is_universal=true & layer<=1
    sparsity<0.02&vocab_kurt>=10&layer!=0

Grammar: ``condition ('&' condition)*`` with ``condition = NAME OP VALUE``; NAME a column of the index's
``neurons`` table (or ``layer`` / ``neuron``), OP one of ``> >= < <= = == !=``, VALUE a finite number or
``true`` / ``false``. Whitespace is ignored. Anything else is a :class:`FilterError` saying what was expected
and where. The result is a parameterised SQL ``WHERE`` fragment: names are quoted after being checked against
the known columns, values are bound parameters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

MAX_FILTER_LENGTH = 500
MAX_CONDITIONS = 16
OPERATORS = {">": ">", ">=": ">=", "<": "<", "<=": "<=", "=": "=", "==": "=", "!=": "!="}
_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.+\-]*?)\s*(>=|<=|==|!=|>|<|=)\s*([^\s<>=!&]+)\s*$")


class FilterError(ValueError):
    """A filter that does not parse or names an unknown column."""


def _value(text: str, where: str) -> float:
    low = text.lower()
    if low in ("true", "false"):
        return 1.0 if low == "true" else 0.0
    try:
        v = float(text)
    except ValueError:
        raise FilterError(f"{where}: {text!r} is not a number (or true / false)") from None
    if not math.isfinite(v):
        raise FilterError(f"{where}: {text!r} is not a finite number")
    return v


def parse_filter(text: str, columns: Iterable[str]) -> list[tuple[str, str, float]]:
    """``[(column, sql operator, value)]``; raises :class:`FilterError`."""
    known = set(columns) | {"layer", "neuron"}
    if not text or not text.strip():
        raise FilterError("empty filter: expected e.g. excess_corr>0.3&kurt>5")
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"filter longer than {MAX_FILTER_LENGTH} characters")
    parts = text.split("&")
    if len(parts) > MAX_CONDITIONS:
        raise FilterError(f"at most {MAX_CONDITIONS} conditions")
    out = []
    for i, part in enumerate(parts, 1):
        where = f"condition {i} ({part.strip()!r})"
        m = _COND.match(part)
        if not m:
            raise FilterError(f"{where}: expected NAME OP VALUE with OP one of {' '.join(OPERATORS)}")
        name, op, value = m.groups()
        if name not in known:
            close = sorted(c for c in known if name.lower() in c.lower())[:8]
            hint = f"; did you mean {', '.join(close)}" if close else ""
            raise FilterError(f"{where}: unknown column {name!r}{hint}")
        out.append((name, OPERATORS[op], _value(value, where)))
    return out


def to_sql(conditions: list[tuple[str, str, float]]) -> tuple[str, list[float]]:
    """``("\"a\" > ? AND ...", [values])`` — names were validated by :func:`parse_filter`."""
    sql, params = [], []
    for name, op, value in conditions:
        if '"' in name:
            raise FilterError(f"invalid column name {name!r}")
        sql.append(f'"{name}" {op} ?')
        params.append(value)
    return " AND ".join(sql), params
