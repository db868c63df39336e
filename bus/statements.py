"""SQL for the router's and the adapter's hot paths, built by peewee once per shape and then reused.

Why: peewee builds a statement's SQL in Python on every call, 0.1-0.6 ms for the archive's
queries, which is more than SQLite takes to run them; a router batch of one document ran
about fifteen of them.  Here a statement is built once for each database kind and number
of values (an ``IN`` list of three is another shape than one of four), and later calls only
bind values.  Results still go through peewee's row conversion (``ModelRaw``), so a
date read back is a ``datetime`` as elsewhere.

Only statements whose values are all parameters may be cached: the builder is called with
placeholder values, and the real values are bound in the order peewee emitted them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from peewee import ModelRaw, Query, SqliteDatabase

Builder = Callable[[list[Any]], Query]
T = TypeVar("T")

_SQL: dict[tuple[str, int, type], str] = {}


def sql(model: Any, name: str, arity: int, build: Builder) -> str:
    """The SQL of ``build`` for ``arity`` values on ``model``'s database (built on first use)."""
    database = model._meta.database
    key = (name, arity, type(getattr(database, "obj", database)))
    text = _SQL.get(key)
    if text is None:
        placeholders = [f"p{i}" for i in range(arity)]
        text, params = build(placeholders).sql()
        if list(params) != placeholders:  # a value peewee inlined or reordered: never cache that
            raise ValueError(f"statement {name!r} does not take its {arity} values in order as parameters")
        _SQL[key] = text
    return text


def padded(values: Sequence[T]) -> list[T]:
    """``values`` of an ``IN`` list, lengthened to the next power of two by repeating the last.

    Every length is a shape of its own, built in Python on first use, and a router's batches
    come in every size from 1 to 100: unpadded, a freshly started router was still building
    SQL for new lengths after half a minute at 200 documents/s (4 % of its CPU).  Powers of
    two leave eight shapes up to 128; a repeated value changes nothing an ``IN`` list matches.
    """
    if not values:
        return []
    size = 1 << (len(values) - 1).bit_length()
    return [*values, *[values[-1]] * (size - len(values))]


def rows(model: Any, name: str, values: Sequence[Any], build: Builder) -> Any:
    """A raw query of the cached statement with ``values`` bound: iterate it, or ``.tuples()``."""
    # ModelRaw, not model.raw: a model may have a field called "raw" (the adapter's store has)
    return ModelRaw(model, sql(model, name, len(values), build), tuple(values))


def first(model: Any, name: str, values: Sequence[Any], build: Builder) -> Any:
    """The first row of :func:`rows`, or None."""
    return next(iter(rows(model, name, values, build)), None)


def execute(model: Any, name: str, values: Sequence[Any], build: Builder) -> int:
    """Run a cached write statement on ``model``'s database; returns the rows it changed."""
    cursor = model._meta.database.execute_sql(sql(model, name, len(values), build), list(values))
    return cursor.rowcount


def insert_many(model: Any, rows: Sequence[dict[str, Any]], *, ignore: bool = False) -> int:
    """Bulk INSERT of ``rows`` (field name -> value); returns how many rows were inserted.

    On SQLite one prepared statement run for every row (building SQL per row in Python cost
    more than SQLite's work); elsewhere multi-row INSERTs, one round trip per slice.
    ``ignore``: rows that would break a unique constraint are skipped instead of failing.
    """
    if not rows:
        return 0
    full = _uniform(model, rows)
    database = model._meta.database
    target = getattr(database, "obj", database)
    if isinstance(target, SqliteDatabase):
        fields = [model._meta.fields[k] for k in full[0]]
        columns = ", ".join(f'"{f.column_name}"' for f in fields)
        verb = "INSERT OR IGNORE" if ignore else "INSERT"
        text = f'{verb} INTO "{model._meta.table_name}" ({columns}) VALUES ({", ".join("?" * len(fields))})'
        plain = (str, int, float, bytes, type(None))
        params = [tuple(v if isinstance(v := row[f.name], plain) else f.db_value(v) for f in fields) for row in full]
        cursor = target.cursor()
        if len(params) == 1:
            cursor.execute(text, params[0])
        else:
            cursor.executemany(text, params)
        return cursor.rowcount
    inserted = 0
    step = max(1, 900 // max(1, len(full[0])))
    for i in range(0, len(full), step):
        query = model.insert_many(full[i : i + step]).as_rowcount()
        inserted += (query.on_conflict_ignore() if ignore else query).execute()
    return inserted


def _uniform(model: Any, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the same keys, every field with a default included (a bulk INSERT takes its
    columns from the first row)."""
    fields = model._meta.fields
    keys = dict.fromkeys(k for row in rows for k in row)
    keys |= dict.fromkeys(k for k, f in fields.items() if f.default is not None and k not in keys)
    out = []
    for row in rows:
        full = dict(row)
        for k in keys:
            if k not in full:
                default = fields[k].default
                full[k] = default() if callable(default) else default
        out.append(full)
    return out
