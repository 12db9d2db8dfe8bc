"""The relationships file (``--relationships-file``): foreign keys declared for views.

A SQLite view has no FOREIGN KEYs, so embedding from or into one finds no relationship.
PostgREST infers a view's relationships from the foreign keys of the tables under it; doing
that in SQLite would mean parsing the view's SELECT (aliases, joins, expressions) to tell which
view column is which table column, which cannot be done reliably. So the relationships are
declared instead, each like a FOREIGN KEY clause::

    relationships:
      - from: books_view          # a view (or table)
        columns: [author_id]
        to: authors               # a table (or view)
        to_columns: [id]          # default: the primary key of `to`
        name: books_view_author   # for !hint; default books_view_author_id_fkey

A declared key is added to its table's foreign keys when the schema is loaded (schema.py), so
it takes part in embedding exactly as a real one: many-to-one, one-to-many, many-to-many
through a junction table whose primary key holds it, hints, PGRST200/PGRST201, roles.

`parse_relationships_file` reads the file without the database; `check_relationships` checks
every entry against a schema (unknown table or column, column counts) and raises one line naming
the entry. On a later schema change an entry that no longer fits is left out (app.py
logs it), not fatal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .schema import ForeignKey

#: Every key of an entry, with its meaning (the README's table is generated from it).
ENTRY_KEYS = {
    "from": "The view or table the key is on. Required.",
    "columns": "Its columns, in order (a list, or one name). Required.",
    "to": "The table or view they reference. Required.",
    "to_columns": "The referenced columns, as many as `columns`. Default: the primary key of "
                  "`to` (required when `to` is a view: a view has none).",
    "name": "The constraint's name, for `!hint` disambiguation. Default: "
            "`<from>_<columns>_fkey`, as PostgreSQL names an unnamed foreign key.",
}
_REQUIRED = ("from", "columns", "to")


class RelationshipsFileError(ValueError):
    """The relationships file cannot be used: one line naming the file and the entry."""


@dataclass(frozen=True)
class DeclaredKey:
    """One entry of the file, as written (checked against a schema by `problem`)."""

    index: int
    table: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]   # () = the primary key of ref_table
    name: Optional[str]

    @property
    def label(self) -> str:
        return f"relationships[{self.index}] ({self.table} -> {self.ref_table})"

    def problem(self, tables: dict) -> Optional[str]:
        """What is wrong with this entry in a schema (``tables``: name -> Table), or None."""
        source, target = tables.get(self.table), tables.get(self.ref_table)
        for key, table, name, columns in (("from", source, self.table, self.columns),
                                          ("to", target, self.ref_table, self.ref_columns)):
            if table is None:
                return f"{key}: no table or view named {name!r}"
            for column in columns:
                if table.column(column) is None:
                    return f"{table.kind} {name} has no column {column!r}"
        ref = self.ref_columns or target.primary_key
        if not ref:
            return (f"to_columns: {target.kind} {target.name} has no primary key: name the "
                    "referenced columns")
        if len(ref) != len(self.columns):
            return (f"{len(self.columns)} column(s) reference {len(ref)} column(s) of "
                    f"{target.name} ({', '.join(ref)})")
        return None

    def foreign_key(self, tables: dict) -> ForeignKey:
        ref = self.ref_columns or tables[self.ref_table].primary_key
        return ForeignKey(self.columns, self.ref_table, tuple(ref), self.name)


def parse_relationships_file(path: str) -> tuple[DeclaredKey, ...]:
    """The entries of a file (YAML or JSON), in file order; RelationshipsFileError."""
    import yaml

    def fail(where: str, message: str):
        raise RelationshipsFileError(f"--relationships-file {path}: {where}: {message}")

    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except OSError as exc:
        fail("cannot read it", str(exc.strerror or exc))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        fail("not valid YAML or JSON" + (f" (line {mark.line + 1})" if mark else ""),
             str(getattr(exc, "problem", None) or exc))
    except UnicodeDecodeError as exc:
        fail("not UTF-8 text", str(exc))
    if not isinstance(document, dict) or set(document) != {"relationships"}:
        fail("top level", "expected one key 'relationships:' holding a list of entries")
    entries = document["relationships"] or []
    if not isinstance(entries, list):
        fail("relationships", "expected a list of entries (from, columns, to, …)")
    out = []
    for i, entry in enumerate(entries):
        where = f"relationships[{i}]"
        if not isinstance(entry, dict):
            fail(where, "expected a mapping with from, columns and to")
        for key in entry:
            if key not in ENTRY_KEYS:
                fail(f"{where}.{key}", f"unknown key (keys: {', '.join(ENTRY_KEYS)})")
        for key in _REQUIRED:
            if key not in entry:
                fail(where, f"'{key}' is missing")
        for key in ("from", "to", "name"):
            if key in entry and not (isinstance(entry[key], str) and entry[key]):
                fail(f"{where}.{key}", "expected a name")
        columns = _columns(entry["columns"], f"{where}.columns", fail)
        ref_columns = (_columns(entry["to_columns"], f"{where}.to_columns", fail)
                       if "to_columns" in entry else ())
        if ref_columns and len(ref_columns) != len(columns):
            fail(where, f"{len(columns)} column(s) in 'columns' but {len(ref_columns)} in "
                        "'to_columns'")
        out.append(DeclaredKey(i, entry["from"], columns, entry["to"], ref_columns,
                               entry.get("name")))
    return tuple(out)


def _columns(value, where: str, fail) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or \
            not all(isinstance(v, str) and v for v in value):
        fail(where, "expected a column name or a non-empty list of them")
    if len(set(value)) != len(value):
        fail(where, "a column is named twice")
    return tuple(value)


def check_relationships(schema, declared, path: str) -> None:
    """Every entry fits the schema (RelationshipsFileError, one line naming the entry)."""
    for key in declared:
        problem = key.problem(schema.tables)
        if problem is not None:
            raise RelationshipsFileError(f"--relationships-file {path}: {key.label}: {problem}")


def relationships_markdown() -> str:
    """The file's keys as Markdown (README, generated)."""
    rows = ["| key | meaning |", "|---|---|"]
    rows += [f"| `{k}` | {v} |" for k, v in ENTRY_KEYS.items()]
    return "\n".join(rows) + "\n"
