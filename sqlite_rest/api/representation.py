"""Rows -> response bodies: JSON (orjson), CSV, the singular object; and Accept negotiation.

JSON: INTEGER is an exact 64-bit number (orjson writes Python ints as they are, never via
float), REAL a number, TEXT a string, NULL null, BLOB base64 text. Columns selected with a
``::json`` cast or a ``->`` JSON path are embedded as JSON, ``::boolean`` as true/false.
"""
from __future__ import annotations

import base64
import csv
import functools
import io
from itertools import repeat
from typing import Optional, Sequence

import orjson

from ..errors import api_error

JSON = "application/json"
CSV = "text/csv"
OBJECT = "application/vnd.pgrst.object+json"
OPENAPI = "application/openapi+json"
#: PostgREST's `nulls=stripped` variants: object fields whose value is null are left out, at
#: any depth (as PostgreSQL's json_strip_nulls; nulls inside arrays stay).
ARRAY_STRIPPED = "application/vnd.pgrst.array+json;nulls=stripped"
OBJECT_STRIPPED = "application/vnd.pgrst.object+json;nulls=stripped"
#: What the Accept parameter ``nulls=stripped`` turns a media type into.
_STRIPPED = {JSON: ARRAY_STRIPPED, OBJECT: OBJECT_STRIPPED}

#: Accept media type -> what we produce (";q=" weighs it; ";nulls=stripped" on the
#: vnd.pgrst types strips nulls).
MEDIA_TYPES = {
    "application/json": JSON,
    "application/*": JSON,
    "*/*": JSON,
    "text/csv": CSV,
    "text/*": CSV,
    "application/vnd.pgrst.object+json": OBJECT,
    "application/vnd.pgrst.object": OBJECT,
    "application/vnd.pgrst.array+json": JSON,
    "application/vnd.pgrst.array": JSON,
    "application/openapi+json": OPENAPI,
}

CONTENT_TYPES = {
    JSON: "application/json; charset=utf-8",
    OBJECT: "application/vnd.pgrst.object+json; charset=utf-8",
    CSV: "text/csv; charset=utf-8",
    OPENAPI: "application/openapi+json; charset=utf-8",
    ARRAY_STRIPPED: ARRAY_STRIPPED + "; charset=utf-8",
    OBJECT_STRIPPED: OBJECT_STRIPPED + "; charset=utf-8",
}


@functools.lru_cache(maxsize=256)
def negotiate(accept: Optional[str], allow_openapi: bool = False) -> str:
    """The media type to answer with; 406 PGRST107 when none is acceptable."""
    if not accept:
        return JSON
    candidates = []
    for position, part in enumerate(accept.split(",")):
        media, _, params = part.strip().partition(";")
        media = media.strip().lower()
        quality = 1.0
        stripped = False
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            name = name.strip().lower()
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
            elif name == "nulls" and value.strip().lower() == "stripped":
                stripped = media.startswith("application/vnd.pgrst.")
        produced = MEDIA_TYPES.get(media)
        if stripped and produced in _STRIPPED:
            produced = _STRIPPED[produced]
        if produced == OPENAPI and not allow_openapi:
            produced = None
        if produced is not None and quality > 0:
            candidates.append((-quality, position, produced))
    if not candidates:
        raise api_error("not_acceptable", accept=accept[:200])
    return min(candidates)[2]


def _blob_to_base64(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot serialise {type(value).__name__}")


class Shape:
    """Output column names and how each is rendered ('value', 'json', 'boolean')."""

    __slots__ = ("names", "kinds", "plain")

    def __init__(self, names: Sequence[str], kinds: Sequence[str]):
        self.names = tuple(names)
        self.kinds = tuple(kinds)
        self.plain = all(k == "value" for k in self.kinds)


@functools.lru_cache(maxsize=2048)
def shape_of(columns: tuple) -> Shape:
    """Shape of sql.py's output columns (a cached tuple of OutputColumn)."""
    return Shape([c.name for c in columns], [c.kind for c in columns])


def _convert(value, kind):
    if value is None:
        return None
    if kind == "embed":  # an embedding: JSON the statement built itself, passed through
        return orjson.Fragment(value)
    if kind == "json":
        # `->` yields JSON text: embed it as JSON rather than as a string
        if isinstance(value, str) and _is_json(value):
            return orjson.Fragment(value)
        return value
    if kind == "boolean":
        return bool(value)
    return value


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
        return True
    except orjson.JSONDecodeError:
        return False


def rows_to_objects(shape: Shape, rows) -> list[dict]:
    names = shape.names
    if shape.plain:  # map/zip/dict run in C: no Python frame per row
        return list(map(dict, map(zip, repeat(names), rows)))
    kinds = shape.kinds
    return [{n: _convert(v, k) for n, k, v in zip(names, kinds, row)} for row in rows]


def dumps(payload) -> bytes:
    return orjson.dumps(payload, default=_blob_to_base64)


def render_json(shape: Shape, rows) -> bytes:
    return dumps(rows_to_objects(shape, rows))


def render_object(shape: Shape, rows) -> bytes:
    if len(rows) != 1:
        raise api_error("singular_not_one", details=f"The result contains {len(rows)} rows")
    return dumps(rows_to_objects(shape, rows)[0])


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _blob_to_base64(value)
    return value


def render_csv(shape: Shape, rows) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(shape.names)
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row])
    return out.getvalue()[:-1].encode("utf-8")  # PostgREST ends on the last row, no newline


def singular(media: str) -> bool:
    """The media type answers one object (406 PGRST116 for any other number of rows)."""
    return media == OBJECT or media == OBJECT_STRIPPED


def strip_nulls(body: bytes) -> bytes:
    """``body`` without the object fields whose value is null, at any depth."""
    def strip(value):
        if type(value) is dict:
            return {k: strip(v) for k, v in value.items() if v is not None}
        if type(value) is list:
            return [strip(v) for v in value]
        return value
    return orjson.dumps(strip(orjson.loads(body)))


def render(media: str, shape: Shape, rows) -> bytes:
    if media == CSV:
        return render_csv(shape, rows)
    if media == OBJECT:
        return render_object(shape, rows)
    if media == ARRAY_STRIPPED:
        return strip_nulls(render_json(shape, rows))
    if media == OBJECT_STRIPPED:
        return strip_nulls(render_object(shape, rows))
    return render_json(shape, rows)
