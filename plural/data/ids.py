"""Ids kept exactly as written: a vocabulary or id column becomes an array of strings, refusing a
missing id and two different values that would read as one id (``1`` and ``"1"``) or one value
written two ways (``1`` and ``1.0``)."""

from __future__ import annotations

from typing import Any, Collection, Sequence

import numpy as np

def show_value(value: Any) -> str:
    """``repr`` of a value, numpy scalars shown as Python ones (``2``, not ``np.int64(2)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _kind(value: Any) -> str:
    """The kind of a non-string id: ``1`` and ``np.int64(1)`` are one kind, ``1.0`` another."""
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    return type(value).__name__


def _same(a: Any, b: Any) -> bool:
    try:
        return _kind(a) == _kind(b) and bool(a == b)
    except (TypeError, ValueError):
        return False


def _entries(values: Any, label: str) -> np.ndarray:
    """``values`` as a 1-d numpy array (typed arrays kept as they are, anything else as objects)."""
    if isinstance(values, np.ndarray):
        arr = values
    elif hasattr(values, "to_numpy"):  # a pandas Series or Index
        arr = values.to_numpy()
    else:
        values = values if isinstance(values, (list, tuple)) else list(values)
        arr = np.fromiter(values, dtype=object, count=len(values))
    if arr.ndim != 1:
        raise ValueError(f"{label} must be one-dimensional, got shape {arr.shape}")
    return arr


def read_ids(columns: Sequence[tuple], *, none_ok: Collection[str] = ()) -> list[np.ndarray]:
    """Raw id columns as ``(n,)`` object arrays of strings, each id kept as written: a string stays
    as it is, an integer (Python or numpy) becomes its decimal text, any other value its ``str``.

    The columns are read together, as one vocabulary (``items_a``, ``items_b`` and ``item_ids``),
    so an id cannot silently change its meaning between them. Cost: one pass over object columns,
    a ``np.unique`` over integer ones; string arrays are taken as they are.

    Args:
        columns: ``(label, values)`` or ``(label, values, row_numbers)`` tuples; ``label`` names
            the column in errors and ``row_numbers`` ``(n,)`` the row reported for each entry
            (its position by default).
        none_ok: labels of the columns in which ``None`` means "no id" (e.g. no context) and is
            kept as ``None``; anywhere else a missing value raises.

    Raises:
        ValueError: naming the row and column of a missing id (``None``, NaN, ``pd.NA``, NaT); or
            naming both values when two different values would read as the same string (``1``
            and ``"1"``) or two equal numbers as different strings (``1`` and ``1.0``).
    """
    import pandas as pd  # lazily, as in to_pandas
    from pandas.api.types import infer_dtype

    out: list[np.ndarray] = []
    strings: list[tuple] = []  # (label, texts, positions of the string entries or None for all, rows)
    others: dict[str, tuple] = {}  # text -> (value, label, row) of the first non-string reading so
    numbers: dict = {}  # value -> (value, text, label, row); equal numbers (1, 1.0, True) share a key

    def note(value, text, label, row):
        prev = others.setdefault(text, (value, label, row))
        if prev[0] is not value and not _same(prev[0], value):
            raise _merged(prev, (value, label, row), text)
        try:
            first = numbers.setdefault(value, (value, text, label, row))
        except TypeError:  # unhashable: nothing can equal it without reading the same
            return
        if first[1] != text:
            raise ValueError(f"{first[2]} row {first[3]} holds {show_value(first[0])} and {label} row "
                             f"{row} holds {show_value(value)}, equal numbers that read as different "
                             f"ids {first[1]!r} and {text!r}; {_AS_STRINGS}")

    for label, values, *given_rows in columns:
        arr = _entries(values, label)
        rows = given_rows[0] if given_rows else None
        at = (lambda pos: pos) if rows is None else (lambda pos, rows=rows: int(rows[pos]))
        if arr.dtype.kind == "U":
            texts = arr.astype(object)
            strings.append((label, texts, None, at))
        elif arr.dtype == object and infer_dtype(arr, skipna=False) == "string":  # all strings
            texts = np.fromiter((v if type(v) is str else str(v) for v in arr), dtype=object,
                                count=len(arr))  # numpy str -> str
            strings.append((label, texts, None, at))
        elif arr.dtype.kind in "iub":
            texts = arr.astype(str).astype(object)
            uniq, first = np.unique(arr, return_index=True)
            for value, pos in zip(uniq.tolist(), first):
                note(value, str(value), label, at(pos))
        else:  # objects and floats, entry by entry
            texts = np.empty(len(arr), dtype=object)
            is_str = np.zeros(len(arr), dtype=bool)
            for pos, value in enumerate(arr):
                if isinstance(value, str):
                    texts[pos] = value if type(value) is str else str(value)  # numpy str -> str
                    is_str[pos] = True
                elif value is None and label in none_ok:
                    continue
                elif (value is None or value is pd.NA or value is pd.NaT
                      or (isinstance(value, (float, np.floating)) and np.isnan(value))):
                    hint = "; use None for no context" if label in none_ok else ""
                    raise ValueError(f"row {at(pos)}: {label} is missing ({show_value(value)}){hint}")
                else:
                    texts[pos] = str(value)
                    note(value, texts[pos], label, at(pos))
            strings.append((label, texts, np.flatnonzero(is_str), at))
        out.append(texts)
    if others:  # a string reading as a non-string id's text: "1" and 1
        for label, texts, positions, at in strings:
            for pos in range(len(texts)) if positions is None else positions:
                if texts[pos] in others:
                    raise _merged(others[texts[pos]], (texts[pos], label, at(pos)), texts[pos])
    return out


_AS_STRINGS = "pass ids as strings so that each id is kept as written"


def _merged(first: tuple, second: tuple, text: str) -> ValueError:
    return ValueError(f"{first[1]} row {first[2]} holds {show_value(first[0])} and {second[1]} row "
                      f"{second[2]} holds {show_value(second[0])}, two different values that both read "
                      f"as the id {text!r}; {_AS_STRINGS}")


