"""Reading a table from a file with every cell kept as written, so ids are never merged, converted
or refused by type guessing (``007`` and ``7``, ``1e3``, ``True``, ``NA`` stay distinct strings);
the converters (``plural.data.converters``) parse numeric columns themselves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd


def _read_delimited(path: Path, sep: str, **kwargs) -> pd.DataFrame:
    """Every cell as its written text; only an empty cell is missing (``NA``, ``null``, ``007``
    and ``1e3`` are ids like any other). ``kwargs`` go to ``pd.read_csv`` and override these."""
    return pd.read_csv(path, **{"sep": sep, "dtype": str, "keep_default_na": False,
                                "na_values": [""], **kwargs})


def _as_written(value: Any) -> Any:
    """A value parsed by :func:`_loads` with JSON's booleans as their text, nested values too."""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, list):
        return [_as_written(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items()}
    return value


def loads_as_written(text: str) -> Any:
    """JSON with every literal as written: strings as they are, numbers as their text (``1e3``
    stays ``"1e3"``, ``1.50`` ``"1.50"``), ``true`` / ``false`` as ``"true"`` / ``"false"``,
    ``null`` as None."""
    return _as_written(json.loads(text, parse_int=str, parse_float=str, parse_constant=str))


def _json_options(path: Path, kwargs: dict) -> str:
    """The encoding, the only option the JSON readers take."""
    unknown = sorted(set(kwargs) - {"encoding"})
    if unknown:
        raise TypeError(f"cannot read {str(path)!r} with {unknown}: JSON is parsed as written, so "
                        "the only option is encoding (pandas options apply to csv, tsv and parquet)")
    return kwargs.get("encoding", "utf-8")


def _preview(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _read_jsonl(path: Path, **kwargs) -> pd.DataFrame:
    """One JSON object a line, values as written (:func:`_loads`); blank lines are skipped and a
    malformed line raises naming the file and its 1-based line number."""
    rows = []
    with open(path, encoding=_json_options(path, kwargs)) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = loads_as_written(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: not valid JSON: {err.msg} (column "
                                 f"{err.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object, got "
                                 f"{_preview(line)}")
            rows.append(row)
    return pd.DataFrame(rows)


def _read_json(path: Path, **kwargs) -> pd.DataFrame:
    """A JSON array of objects (``orient="records"``), or an object of columns, each a list of
    values or pandas' default ``{index: value}``; values as written (:func:`_loads`)."""
    try:
        value = loads_as_written(Path(path).read_text(encoding=_json_options(path, kwargs)))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {err.lineno}: not valid JSON: {err.msg} (column "
                         f"{err.colno})") from None
    if isinstance(value, list):
        bad = next((k for k, row in enumerate(value) if not isinstance(row, dict)), None)
        if bad is not None:
            raise ValueError(f"{path}: record {bad} is not a JSON object: "
                             f"{_preview(json.dumps(value[bad]))}")
        return pd.DataFrame(value)
    if isinstance(value, dict) and all(isinstance(c, list) for c in value.values()):
        lengths = {len(c) for c in value.values()}
        if len(lengths) > 1:
            raise ValueError(f"{path}: columns have different lengths {sorted(lengths)}")
        return pd.DataFrame(value)
    if isinstance(value, dict) and all(isinstance(c, dict) for c in value.values()):
        index = list(dict.fromkeys(k for c in value.values() for k in c))
        return pd.DataFrame({name: [c.get(k) for k in index] for name, c in value.items()})
    raise ValueError(f"{path}: expected an array of objects or an object of columns (lists, or "
                     "{index: value} objects)")


_READERS: dict[str, Callable[..., pd.DataFrame]] = {
    ".csv": lambda path, **kw: _read_delimited(path, ",", **kw),
    ".tsv": lambda path, **kw: _read_delimited(path, "\t", **kw),
    ".jsonl": _read_jsonl, ".json": _read_json, ".parquet": pd.read_parquet,
}


def read_table(path: str | Path, **kwargs) -> pd.DataFrame:
    """Read a table by its suffix, keeping every cell as written, so ids such as ``007`` and
    ``7``, ``1e3``, ``True``, ``NA`` or ``null`` stay distinct strings (numeric columns are parsed
    later, by the converters).

    - ``.csv`` / ``.tsv``: every column as text and only an empty cell missing (``pd.read_csv``
      with ``dtype=str, keep_default_na=False, na_values=[""]``); ``kwargs`` go to
      ``pd.read_csv`` and override these (a ``dtype`` given replaces ``str``).
    - ``.jsonl`` (one JSON object a line; blank lines skipped; a malformed line raises naming its
      line number) and ``.json`` (an array of objects, or an object of columns): parsed with
      :mod:`json`, strings as they are, numbers as their literal text (``1e3`` -> ``"1e3"``),
      ``true`` / ``false`` -> ``"true"`` / ``"false"``, ``null`` missing; the only option is
      ``encoding``.
    - ``.parquet``: its own column types (``pd.read_parquet`` with ``kwargs``); the converters then
      turn ids into text with ``str``.

    Returns:
        ``(n_rows, n_columns)`` frame.
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"cannot read {str(path)!r}: suffix {path.suffix!r} is not one of "
                         f"{sorted(_READERS)}")
    return reader(path, **kwargs)
