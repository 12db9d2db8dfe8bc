"""The schema cache: which tables and views exist, and their columns and keys.

Everything the SQL builder pastes into SQL is a name taken from here, never
from the request. The cache is reloaded when `PRAGMA schema_version` changes
(one cheap pragma per request). A `Schema` is immutable, so threads may share
one while another thread loads its successor.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field, replace
from typing import Callable

import apsw

# Tables that belong to the machinery, never to the API.
INTERNAL_TABLES = frozenset({"_litestream_seq", "_litestream_lock", "__sqlite_rest_migrations"})


def affinity_of(declared_type: str) -> str:
    """SQLite's column affinity rules (https://sqlite.org/datatype3.html §3.1).

    Returns INTEGER, TEXT, BLOB, REAL or NUMERIC. An empty declared type (as on
    a view's expression column) gives BLOB, i.e. "no affinity".
    """
    t = declared_type.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if not t or "BLOB" in t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


def quote_identifier(name: str) -> str:
    """Double-quote an SQL identifier (embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, eq=False)
class Column:
    name: str
    declared_type: str     # as written in CREATE TABLE; "" when none
    affinity: str          # INTEGER | TEXT | BLOB | REAL | NUMERIC
    notnull: bool
    default: str | None    # the DEFAULT expression as SQL text, None when none
    pk: int                # 1-based position in the primary key, 0 when not part of it
    generated: bool = False  # generated (virtual/stored) columns cannot be written
    quoted: str = field(default="", repr=False)

    def __post_init__(self):
        object.__setattr__(self, "quoted", quote_identifier(self.name))


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]  # empty when it references the other table's primary key
    name: str | None = None       # declared in --relationships-file (SQLite reports none)


@dataclass(frozen=True, eq=False)
class Table:
    name: str
    kind: str                          # "table" | "view" | "virtual"
    columns: tuple[Column, ...]        # in table order, hidden columns excluded
    primary_key: tuple[str, ...]       # column names in key order; () when none
    foreign_keys: tuple[ForeignKey, ...] = ()
    unique_keys: tuple[tuple[str, ...], ...] = ()  # UNIQUE indexes/constraints incl. the PK
    without_rowid: bool = False
    rowid_alias: str | None = None     # the INTEGER PRIMARY KEY column, if any
    #: Embeddable relationships by the related table's name (api/embedding.py), filled
    #: once every table of the schema is known.
    relations: dict = field(default_factory=dict, repr=False)
    fts5: bool = False                 # an FTS5 virtual table (its columns take MATCH)
    fts_index: "Table | None" = None   # the FTS5 table `<name>_fts` indexing it by rowid
    #: A view's INSTEAD OF triggers: the writes ("INSERT", "UPDATE", "DELETE") it takes.
    instead_of: frozenset = frozenset()
    by_name: dict = field(default_factory=dict, repr=False)
    quoted: str = field(default="", repr=False)

    def __post_init__(self):
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})
        object.__setattr__(self, "quoted", quote_identifier(self.name))

    def column(self, name: str) -> Column | None:
        return self.by_name.get(name)

    @property
    def relation_name(self) -> str:
        """The name its relationships know it by (api/embedding.py): its own; a function's
        rows are known by the table they are rows of (api/functions.FunctionResult)."""
        return self.name

    @property
    def verbs(self) -> tuple[str, ...]:
        """The HTTP verbs it supports, in PostgREST's `Allow` order: a view writes only
        through its INSTEAD OF triggers (SQLite refuses the write otherwise), and PUT needs
        a primary key to be an upsert of one row (views have none in SQLite)."""
        view = self.kind == "view"
        insert = not view or "INSERT" in self.instead_of
        update = not view or "UPDATE" in self.instead_of
        return (("GET", "HEAD") + (("POST",) if insert else ())
                + (("PUT",) if insert and update and self.primary_key else ())
                + (("PATCH",) if update else ())
                + (("DELETE",) if not view or "DELETE" in self.instead_of else ()))


@dataclass(frozen=True, eq=False)
class Schema:
    version: int
    tables: dict  # name -> Table, exposable tables and views only

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)


def missing_tables(schema: Schema, names) -> list[str]:
    """The names (e.g. of --security-allow-table) that name no table or view of `schema`."""
    return sorted(name for name in names if schema.table(name) is None)


def is_exposable(name: str) -> bool:
    return not name.lower().startswith("sqlite_") and name not in INTERNAL_TABLES


def load_schema(conn: apsw.Connection, declared=()) -> Schema:
    """Read the `main` schema in one read transaction, so it is self-consistent.
    ``declared``: the foreign keys of --relationships-file (api/relationships_file.py), added
    to their tables; one that no longer fits the schema is left out."""
    cursor = conn.cursor()
    with conn:  # a savepoint: a consistent snapshot across the pragmas
        version = cursor.execute("PRAGMA schema_version").fetchall()[0][0]
        tables = {}
        listed = cursor.execute(
            "SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'").fetchall()
        for name, kind, without_rowid in listed:
            if kind not in ("table", "view", "virtual") or not is_exposable(name):
                continue
            tables[name] = _load_table(cursor, name, kind, bool(without_rowid))
        sql_of = dict(cursor.execute(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'table'").fetchall())
        fts5 = {name for (name,) in cursor.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' "
            "AND sql LIKE 'CREATE VIRTUAL TABLE%USING fts5%'")}
        triggers = cursor.execute(
            "SELECT tbl_name, sql FROM sqlite_schema WHERE type = 'trigger'").fetchall()
    for name in fts5 & tables.keys():
        tables[name] = replace(tables[name], fts5=True)
    instead_of: dict[str, set] = {}
    for name, sql in triggers:
        m = _INSTEAD_OF.match(sql or "")
        if m and name in tables and tables[name].kind == "view":
            instead_of.setdefault(name, set()).add(m.group(1).upper())
    for name, events in instead_of.items():
        tables[name] = replace(tables[name], instead_of=frozenset(events))
    for name, table in list(tables.items()):
        index = tables.get(name + "_fts")
        if index is not None and index.fts5 and not table.fts5 and not table.without_rowid:
            tables[name] = replace(table, fts_index=index)
    for key in declared:
        if key.problem(tables) is None:
            table = tables[key.table]
            tables[key.table] = replace(table, foreign_keys=table.foreign_keys
                                        + (key.foreign_key(tables),))
    _link_relationships(tables, sql_of)
    return Schema(version, tables)


# The event of an INSTEAD OF trigger, from the header of its CREATE TRIGGER (the body may
# mention anything): CREATE TRIGGER [IF NOT EXISTS] [schema.]name INSTEAD OF <event>.
_NAME = r'(?:"(?:[^"]|"")*"|\[[^\]]*\]|`[^`]*`|\w+)'
_INSTEAD_OF = re.compile(r'\s*CREATE\s+(?:TEMP(?:ORARY)?\s+)?TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?'
                         + _NAME + r'(?:\s*\.\s*' + _NAME + r')?'
                         r'\s+INSTEAD\s+OF\s+(INSERT|UPDATE|DELETE)\b', re.I)
_NAMED_FK = re.compile(r'CONSTRAINT\s+("(?:[^"]|"")+"|\[[^\]]+\]|`[^`]+`|\w+)\s+'
                       r'FOREIGN\s+KEY\s*\(([^)]*)\)', re.I)
_NAMED_COLUMN_FK = re.compile(r'(?:^|[(,])\s*("(?:[^"]|"")+"|\w+)[^,]*?CONSTRAINT\s+'
                              r'("(?:[^"]|"")+"|\w+)\s+REFERENCES', re.I)


def _unquote(name: str) -> str:
    name = name.strip()
    if name[:1] in '"[`':
        name = name[1:-1].replace('""', '"')
    return name


def constraint_names(create_sql: str | None) -> dict[tuple, str]:
    """Names given by ``CONSTRAINT name`` to FOREIGN KEYs in a CREATE TABLE, by their columns
    (PRAGMA foreign_key_list does not report them)."""
    names: dict[tuple, str] = {}
    if not create_sql:
        return names
    for name, cols in _NAMED_FK.findall(create_sql):
        names[tuple(_unquote(c) for c in cols.split(","))] = _unquote(name)
    for col, name in _NAMED_COLUMN_FK.findall(create_sql):
        names.setdefault((_unquote(col),), _unquote(name))
    return names


def _link_relationships(tables: dict, sql_of: dict) -> None:
    """Fill every table's ``relations`` from the FOREIGN KEYs (api/embedding.py)."""
    from .embedding import Relationship
    from .embedding import fk_name as default_name

    named = {name: constraint_names(sql_of.get(name)) for name in tables}

    def fk_name(table: str, fk) -> str:
        return fk.name or named.get(table, {}).get(fk.columns) or default_name(table, fk.columns)

    def pairs(table, fk):
        target = tables.get(fk.ref_table)
        if target is None:
            return None
        ref = fk.ref_columns or target.primary_key
        if len(ref) != len(fk.columns):
            return None
        return tuple(zip(fk.columns, ref))

    for table in tables.values():
        keys = {frozenset(k) for k in table.unique_keys}
        for fk in table.foreign_keys:
            on = pairs(table, fk)
            if on is None:
                continue
            target = tables[fk.ref_table]
            name = fk_name(table.name, fk)
            # a key's columns hold each parent at most once: one-to-one (not for a self
            # reference, whose two directions PostgREST tells apart as parent and children)
            one = frozenset(fk.columns) in keys and target is not table
            table.relations.setdefault(target.name, []).append(
                Relationship("m2o", target, on, name, one_to_one=one))
            target.relations.setdefault(table.name, []).append(
                Relationship("o2m", table, tuple((b, a) for a, b in on), name, one_to_one=one))
    for junction in tables.values():  # many-to-many: both keys inside the junction's PK
        keys = [(fk, pairs(junction, fk)) for fk in junction.foreign_keys]
        keys = [(fk, on) for fk, on in keys if on is not None
                and set(fk.columns) <= set(junction.primary_key)]
        for i, (fk_a, on_a) in enumerate(keys):
            for fk_b, on_b in keys[i + 1:]:
                a, b = tables[fk_a.ref_table], tables[fk_b.ref_table]
                if a is b:
                    continue
                name_a, name_b = fk_name(junction.name, fk_a), fk_name(junction.name, fk_b)
                a.relations.setdefault(b.name, []).append(Relationship(
                    "m2m", b, tuple((t, j) for j, t in on_a), name_a, junction,
                    tuple((j, t) for j, t in on_b), name_b))
                b.relations.setdefault(a.name, []).append(Relationship(
                    "m2m", a, tuple((t, j) for j, t in on_b), name_b, junction,
                    tuple((j, t) for j, t in on_a), name_a))


def _load_table(cursor, name: str, kind: str, without_rowid: bool) -> Table:
    columns = []
    for _cid, cname, ctype, notnull, default, pk, hidden in cursor.execute(
            "SELECT cid, name, type, \"notnull\", dflt_value, pk, hidden "
            "FROM pragma_table_xinfo(?, 'main')", (name,)).fetchall():
        if hidden == 1:  # hidden columns of virtual tables
            continue
        ctype = ctype or ""
        columns.append(Column(cname, ctype, affinity_of(ctype), bool(notnull), default,
                              pk, generated=hidden in (2, 3)))
    pk_columns = sorted((c for c in columns if c.pk), key=lambda c: c.pk)
    primary_key = tuple(c.name for c in pk_columns)
    rowid_alias = None
    if (kind == "table" and not without_rowid and len(pk_columns) == 1
            and pk_columns[0].declared_type.upper() == "INTEGER"):
        rowid_alias = pk_columns[0].name
    foreign_keys: dict[int, list] = {}
    for fk_id, _seq, ref_table, from_col, to_col in cursor.execute(
            "SELECT id, seq, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?, 'main') "
            "ORDER BY id, seq", (name,)).fetchall():
        foreign_keys.setdefault(fk_id, []).append((ref_table, from_col, to_col))
    fks = tuple(ForeignKey(tuple(f for _, f, _ in parts), parts[0][0],
                           tuple(t for _, _, t in parts if t is not None))
                for parts in foreign_keys.values())
    unique_keys = []
    if kind == "table":
        for index_name, unique, partial in cursor.execute(
                "SELECT name, \"unique\", partial FROM pragma_index_list(?, 'main')",
                (name,)).fetchall():
            if not unique or partial:
                continue
            cols = tuple(r[0] for r in cursor.execute(
                "SELECT name FROM pragma_index_info(?, 'main') ORDER BY seqno",
                (index_name,)).fetchall())
            if cols and None not in cols:  # expression indexes have NULL names
                unique_keys.append(cols)
        if rowid_alias is not None:
            unique_keys.insert(0, (rowid_alias,))
    return Table(name, kind, tuple(columns), primary_key, fks, tuple(unique_keys),
                 without_rowid, rowid_alias)


class SchemaCache:
    """The current `Schema`, reloaded when the database's schema_version moves.

    `get(conn)` costs one `PRAGMA schema_version` when nothing changed. Any
    connection to the same database may be passed: the version is per file.

    Requests skip even that while the database does not change: they are planned on the
    cached schema (`planned`) and checked by the connection's data version
    (SQLITE_FCNTL_DATA_VERSION: a counter in memory that moves when a transaction finds the
    database changed since the connection's previous one, by anyone). When it has not moved
    since the PRAGMA last confirmed the schema on that connection, the transaction saw that
    schema. Reads check after their statement ran (`confirm`, routes.read_table), writes
    inside their transaction before their first statement (`holds`, writes.write). The PRAGMA
    was 9 % of a GET by key and of a POST in-process, 8 % of a worker's GIL time (#11).
    """

    def __init__(self, on_reload: Callable[[Schema | None, Schema], None] | None = None,
                 declared=()):
        self._schema: Schema | None = None
        #: --relationships-file's foreign keys, added at every (re)load.
        self.declared = tuple(declared)
        self._lock = threading.Lock()
        #: Called with (previous schema or None, new schema) after every (re)load.
        self.on_reload = on_reload
        #: Per thread, {connection: (its data version, the schema confirmed at it)}: a
        #: thread's connections are its own (db.Database) and die with it.
        self._local = threading.local()

    def _confirmed(self) -> dict:
        try:
            return self._local.confirmed
        except AttributeError:
            confirmed = self._local.confirmed = {}
            return confirmed

    def _confirm_on(self, conn: apsw.Connection, schema: Schema) -> None:
        confirmed = self._confirmed()
        if len(confirmed) > 4:  # a thread has a reader and a writer; forks leave stale ones
            confirmed.clear()
        confirmed[conn] = (conn.data_version(), schema)

    def get(self, conn: apsw.Connection) -> Schema:
        version = conn.execute("PRAGMA schema_version").get  # one row, one column
        schema = self._schema
        if schema is not None and schema.version == version:
            self._confirm_on(conn, schema)
            return schema
        with self._lock:
            # Asked again under the lock: threads that queued here while another reloaded
            # find the schema current instead of each reloading it (a migration running).
            version = conn.execute("PRAGMA schema_version").get
            schema = self._schema
            if schema is None or schema.version != version:
                previous, schema = schema, load_schema(conn, self.declared)
                self._schema = schema
                # load_schema read it in one transaction, the connection's latest
                self._confirm_on(conn, schema)
                if self.on_reload is not None:
                    self.on_reload(previous, schema)
            else:
                self._confirm_on(conn, schema)
            return schema

    def planned(self, conn: apsw.Connection) -> Schema:
        """The schema to plan a request on: the cached one, unchecked (no query). A read must
        then be checked with `confirm`, a write with `holds`."""
        return self._schema or self.get(conn)

    def confirm(self, conn: apsw.Connection, schema: Schema) -> Schema:
        """After a read planned on ``schema`` ran its statements on ``conn``: the schema its
        transaction saw, ``schema`` itself when nothing changed (read it again otherwise).

        Sound because schema_version only grows: when a later PRAGMA still finds the version
        ``schema`` was loaded at, every snapshot between (the read's) had it too."""
        seen = self._confirmed().get(conn)
        if seen is not None and seen[1] is schema and seen[0] == conn.data_version():
            return schema
        return self.get(conn)

    def holds(self, conn: apsw.Connection, schema: Schema) -> bool:
        """Inside a transaction on ``conn`` (a write's, before its first statement): True when
        its snapshot has ``schema``. No reload here: the caller plans again on `get`."""
        version = conn.data_version()  # the snapshot's: taken by BEGIN IMMEDIATE
        seen = self._confirmed().get(conn)
        if seen is not None and seen[1] is schema and seen[0] == version:
            return True
        if conn.execute("PRAGMA schema_version").get != schema.version:
            return False
        self._confirm_on(conn, schema)
        return True

    def invalidate(self) -> None:
        self._schema = None
