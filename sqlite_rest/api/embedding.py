"""Resource embedding: related rows through FOREIGN KEYs, in the same SQL statement.

A relationship is found from the schema's foreign keys (schema.py fills ``Table.relations``):

- **many-to-one**: this table has a FOREIGN KEY to the embedded one: a JSON object or null;
- **one-to-many**: the embedded table has a FOREIGN KEY to this one: a JSON array;
- **many-to-many**: a junction table has a FOREIGN KEY to each (PostgREST's rule: both keys'
  columns are part of the junction's PRIMARY KEY): a JSON array.

Each embedding becomes a correlated subquery built with SQLite's JSON functions, so a request
is one statement whatever the number of parent rows. An embedded table is read under an alias
of its own (``_e1``, ``_e2``, …) and its parent by its table name or alias, so the correlation
always says which side it means; the embedded resource's own columns, filters and order are
unqualified and resolve to the innermost table. Ambiguity and missing relationships are
PostgREST's errors (PGRST201 with the candidates, PGRST200). A FOREIGN KEY has no name in
SQLite unless declared with ``CONSTRAINT``; as in PostgreSQL, an unnamed one is called
``<table>_<columns>_fkey`` for ``!hint`` disambiguation.

A parent may be a function's rows (api/functions.FunctionResult): relationships know it by its
table's name (``Table.relation_name``), the SQL by its CTE alias (``Table.quoted``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import api_error, closest_name
from .query import And, Embed, Star, count_fields
from .schema import Table, quote_identifier


@dataclass(frozen=True)
class Relationship:
    kind: str                    # "m2o" | "o2m" | "m2m"
    target: Table
    #: (this table's column, the target's column) pairs (m2m: this table <-> junction).
    on: tuple
    constraint: str              # the FOREIGN KEY's name (m2o/o2m), or the junction's (m2m)
    junction: Table | None = None
    #: m2m: (junction column, target column) pairs.
    junction_on: tuple = ()
    #: m2m: the name of the junction's key to the target.
    target_constraint: str = ""
    #: m2o/o2m whose foreign key columns are also a key (PRIMARY KEY or UNIQUE) of their
    #: table: one row at most on either side, so both sides embed an object (PostgREST).
    one_to_one: bool = False

    @property
    def to_one(self) -> bool:
        return self.kind == "m2o" or self.one_to_one

    def describe(self, parent: str) -> dict:
        """One candidate of PGRST201's details, as PostgREST words them."""
        if self.kind == "m2m":
            return {"cardinality": "many-to-many",
                    "embedding": f"{parent} with {self.target.name}",
                    "relationship": f"{self.junction.name} using {self.constraint} and "
                                    f"{self.target_constraint}"}
        cardinality = "one-to-one" if self.one_to_one else \
            "many-to-one" if self.kind == "m2o" else "one-to-many"
        return {"cardinality": cardinality,
                "embedding": f"{parent} with {self.target.name}",
                "relationship": f"{self.constraint} using {parent}({', '.join(a for a, _ in self.on)}) "
                                f"and {self.target.name}({', '.join(b for _, b in self.on)})"}


def fk_name(table: str, columns) -> str:
    """PostgreSQL's default name of an unnamed FOREIGN KEY constraint."""
    return f"{table}_{'_'.join(columns)}_fkey"


def _self_parent(parent: Table, embed: Embed) -> Relationship | None:
    """The many-to-one self relationship ``embed`` names by its foreign key column
    (``family?select=parent_id(*)``: PostgREST's way to the parent row of the same table)."""
    if embed.hint is not None or embed.name in parent.relations:
        return None
    return next((r for r in parent.relations.get(parent.relation_name, ())
                 if r.kind == "m2o" and len(r.on) == 1 and r.on[0][0] == embed.name), None)


def target_name(parent: Table | None, embed: Embed) -> str:
    """The table an embedding reads (for the allow-list and roles): its name, or the parent
    itself for a self relationship named by its column."""
    return parent.relation_name if parent is not None and _self_parent(parent, embed) else embed.name


def find_relationship(parent: Table, embed: Embed) -> Relationship:
    """The one relationship ``embed`` names from ``parent`` (`_find_relationship`), whose
    columns on the parent's side ``parent`` has: a function's rows (api/functions.py) are known
    by their table's relationships but may lack a column one joins on, which is a 42703
    naming the column and the relationship (a table always has its keys' columns)."""
    rel = _find_relationship(parent, embed)
    missing = [a for a, _ in rel.on if a not in parent.by_name]
    if missing:
        raise api_error(
            "unknown_column", column=f"{parent.name}.{missing[0]}",
            details=f"'{parent.name}' returns rows of '{parent.relation_name}', and its "
                    f"relationship {rel.constraint} to '{rel.target.name}' joins on "
                    f"{parent.relation_name}({', '.join(a for a, _ in rel.on)})",
            hint=f"select {', '.join(missing)} in the SQL of '{parent.name}' "
                 "(the functions file)")
    return rel


def _find_relationship(parent: Table, embed: Embed) -> Relationship:
    """The one relationship ``embed`` names from ``parent`` (its ``!hint`` decides between
    several); PGRST200 when there is none, PGRST201 when it stays ambiguous.

    A self relationship (a FOREIGN KEY to its own table) is one key seen both ways; PostgREST's
    convention picks one: the table's name is the children (one-to-many, ``!hint`` naming their
    column: ``children:family!parent_id(*)``), the foreign key column the parent
    (many-to-one: ``parent_id(*)``)."""
    self_parent = _self_parent(parent, embed)
    if self_parent is not None:
        return self_parent
    candidates = sorted(parent.relations.get(embed.name, ()), key=lambda r: r.constraint)
    if embed.name == parent.relation_name:
        candidates = [r for r in candidates if r.kind != "m2o"]
        if embed.hint is not None:
            candidates = [r for r in candidates
                          if r.kind == "o2m" and len(r.on) == 1 and r.on[0][1] == embed.hint]
    elif embed.hint is not None:
        hint = embed.hint
        candidates = [r for r in candidates if _matches(r, hint)]
    if not candidates:
        raise api_error(
            "no_relationship", parent=parent.relation_name, target=embed.name,
            details=f"Searched for a foreign key relationship between "
                    f"'{parent.relation_name}' and '{embed.name}'"
                    f"{' using the hint ' + repr(embed.hint) if embed.hint else ''}"
                    " in the schema, but no matches were found.",
            hint=_closest(parent, embed.name))
    if len(candidates) > 1:
        raise api_error(
            "ambiguous_relationship", parent=parent.relation_name, target=embed.name,
            details=[r.describe(parent.relation_name) for r in candidates],
            hint=f"Try changing '{embed.name}' to one of the following: "
                 + ", ".join(f"'{embed.name}!{_hint_of(r)}'" for r in candidates)
                 + ". Find the desired relationship in the 'details' key.")
    return candidates[0]


def _matches(r: Relationship, hint: str) -> bool:
    if r.kind == "m2m":
        return hint in (r.junction.name, r.constraint, r.target_constraint)
    columns = {a for a, _ in r.on} | {b for _, b in r.on}
    return hint == r.constraint or hint in columns


def _hint_of(r: Relationship) -> str:
    return r.junction.name if r.kind == "m2m" else r.constraint


def _closest(parent: Table, name: str, allowed=None) -> str | None:
    names = [n for n in parent.relations if allowed is None or n in allowed]
    close = closest_name(name, names, cutoff=0.6)  # difflib's default, as it always was
    return f"Perhaps you meant '{close}' instead of '{name}'." if close else None


# --- SQL ---------------------------------------------------------------------------------------

class EmbedContext:
    """Aliases for the embedded tables of one statement (``_e1``, ``_e2``, …)."""

    def __init__(self):
        self.count = 0

    def alias(self) -> str:
        self.count += 1
        return f"_e{self.count}"


def _correlation(rel: Relationship, parent_ref: str, alias: str, embed: Embed,
                 params: list, build_where) -> str:
    """The WHERE that ties the embedded table (``alias``) to its parent row (many-to-many:
    through junction rows passing the role's row filter of the junction, if any)."""
    if rel.kind == "m2m":
        j = rel.junction.quoted
        inner = " AND ".join(f"_j.{quote_identifier(jc)} = {parent_ref}.{quote_identifier(pc)}"
                             for pc, jc in rel.on)
        to_target = " AND ".join(f"_j.{quote_identifier(jc)} = {alias}.{quote_identifier(tc)}"
                                 for jc, tc in rel.junction_on)
        own = build_where(rel.junction, embed.junction_filters, params)
        own = f" AND ({own[len(' WHERE '):]})" if own else ""
        return f"EXISTS (SELECT 1 FROM {j} AS _j WHERE {inner} AND {to_target}{own})"
    return " AND ".join(f"{alias}.{quote_identifier(tc)} = {parent_ref}.{quote_identifier(pc)}"
                        for pc, tc in rel.on)


def embed_exists(parent: Table, parent_ref: str, embed: Embed, params: list,
                 ctx: EmbedContext, build_where, compile_order) -> str:
    """``EXISTS (…)``: the parent row has a matching embedded row (for !inner and
    ``name=not.is.null``; NOT of it for ``name=is.null``). A matching row is one the
    embedding would show: its filters hold, and so do its own embeddings' !inner / is.null
    (``books!inner(reviews!inner(stars))``: an author whose books all lack such a review
    has no book to show, and is dropped, as PostgREST's inner joins nest)."""
    rel = find_relationship(parent, embed)
    alias = ctx.alias()
    where = _embed_where(rel, parent_ref, alias, rel.target, embed, params, ctx, build_where,
                         compile_order)
    return f"EXISTS (SELECT 1 FROM {rel.target.quoted} AS {alias}{where})"


def embed_sql(parent: Table, parent_ref: str, embed: Embed, params: list, ctx: EmbedContext,
              compile_item, build_where, compile_order) -> list[tuple[str, str, str]]:
    """[(SQL expression, output name, output kind)] of one embedding: one JSON value, or for a
    spread, one column per selected column of the embedded resource (to-many: an array of
    its values)."""
    rel = find_relationship(parent, embed)
    if embed.spread and rel.to_one and (embed.order or embed.limit is not None
                                        or embed.offset):
        raise api_error("query_parse",
                        message=f"a to-one spread embedding takes no order, limit or offset: "
                                f"'{embed.name}' is many-to-one from '{parent.relation_name}'",
                        details=f"in ...{embed.name}")
    target, alias = rel.target, ctx.alias()
    # (sql, name, kind, its own params) inside the embedded SELECT: each field keeps its
    # parameters, bound again wherever the JSON value repeats its SQL (_json_value)
    fields: list[tuple[str, str, str, list]] = []
    grouped: list[int] = []  # with an aggregate: the positions of the other fields (GROUP BY)
    aggregated = False
    for item in count_fields(target, embed.select):
        start = len(fields)
        if type(item) is Star:
            for column in target.columns:
                fields.append((column.quoted, column.name, _kind(column), []))
        elif type(item) is Embed:
            if not item.select:
                continue  # name(): only filters
            own: list = []
            for sql, name, kind in embed_sql(target, alias, item, own, ctx, compile_item,
                                             build_where, compile_order):
                fields.append((sql, name, kind, own))
                own = []  # a spread's columns: the params went with the first one
        elif item.aggregate is not None and embed.spread:
            raise api_error("query_parse", message="aggregates in a spread embedding are "
                            "not supported", details=f"in ...{embed.name}")
        else:
            own = []
            sql, name, kind = compile_item(target, item, own)
            fields.append((sql, name, kind, own))
            if item.aggregate is not None:
                aggregated = True
                continue
        grouped.extend(range(start + 1, len(fields) + 1))
    if embed.spread:
        out = []
        where_params: list = []
        where = _embed_where(rel, parent_ref, alias, target, embed, where_params, ctx,
                             build_where, compile_order)
        source = f"{target.quoted} AS {alias}"
        if rel.to_one:
            for sql, name, kind, own in fields:
                params.extend(own)
                params.extend(where_params)
                out.append((f"(SELECT {sql} FROM {source}{where})", name, kind))
            return out
        # To-many (PostgREST 13): each column becomes an array, and the arrays are correlated
        # (the i-th values come from one row). Each array is its own subquery, and the planner
        # may read them through different indexes (a covering one for one column only), so
        # the rows are put in one total order: the request's, then the row's identity.
        order_sql, order_params = compile_order(target, embed.order)
        order_sql = (order_sql + ", " if order_sql else " ORDER BY ") + _identity(target, alias)
        page, page_params = _page(embed)
        for sql, name, kind, own in fields:
            params.extend(own)
            params.extend(where_params)
            params.extend(order_params)
            params.extend(page_params)
            rows = f"SELECT {sql} AS _c0 FROM {source}{where}{order_sql}{page}"
            out.append((f"(SELECT COALESCE(json_group_array({_json_value('_c0', kind)}), "
                        f"json('[]')) FROM ({rows}))", name, "embed"))
        return out
    # The embedded rows' values come out of an inner SELECT (each expression once, its
    # parameters bound once), and the JSON is built over them outside: no row is rendered to
    # JSON text and parsed again, and only nested JSON needs json() (SQLite's JSON subtype
    # does not cross a subquery).
    columns = []
    parts = []
    for i, (sql, name, kind, own) in enumerate(fields):
        columns.append(f"{sql} AS _c{i}")
        params.extend(own)
        parts.append(f"'{_sql_text(name)}', {_json_value(f'_c{i}', kind)}")
    obj = "json_object(" + ", ".join(parts) + ")"
    where = _embed_where(rel, parent_ref, alias, target, embed, params, ctx, build_where,
                         compile_order)
    source = f"{target.quoted} AS {alias}"
    order_sql, page = "", ""
    if not rel.to_one:
        order_sql, order_params = compile_order(target, embed.order)
        params.extend(order_params)
        page, page_params = _page(embed)
        params.extend(page_params)
    # PostgREST's implied GROUP BY inside the embedding: its other fields group its rows
    group = (" GROUP BY " + ", ".join(map(str, grouped))) if aggregated and grouped else ""
    rows = f"SELECT {', '.join(columns) or 'NULL'} FROM {source}{where}{group}{order_sql}{page}"
    if rel.to_one:
        return [(f"(SELECT {obj} FROM ({rows}))", embed.output_name, "embed")]
    return [(f"(SELECT COALESCE(json_group_array({obj}), json('[]')) FROM ({rows}))",
             embed.output_name, "embed")]


def _embed_where(rel, parent_ref, alias, target, embed, params, ctx, build_where,
                 compile_order) -> str:
    """The embedded SELECT's WHERE: the correlation, its filters, its embeddings' !inner."""
    correlation = _correlation(rel, parent_ref, alias, embed, params, build_where)
    where = build_where(target, embed.filters, params)
    where = f" WHERE {correlation}" + (f" AND ({where[len(' WHERE '):]})" if where else "")
    for item in embed.select:  # !inner / is.null of the embedding's own embeddings
        if type(item) is Embed and (item.inner or item.null_filter is not None):
            exists = embed_exists(target, alias, item, params, ctx, build_where, compile_order)
            where += f" AND {'NOT ' if item.null_filter else ''}{exists}"
    return where


def _page(embed: Embed) -> tuple[str, list]:
    """`` LIMIT n OFFSET ?`` of a to-many embedding, and its parameters (the limit written
    in the SQL: sql.limit_sql)."""
    from .sql import limit_sql

    if embed.limit is None and not embed.offset:
        return "", []
    page, params = limit_sql(embed.limit), []
    if embed.offset:
        page += " OFFSET ?"
        params.append(embed.offset)
    return page, params


def _identity(table: Table, alias: str) -> str:
    """ORDER BY terms that tell ``table``'s rows apart: its rowid, the primary key of a
    WITHOUT ROWID table, or every column (a view: rows equal in every column are
    interchangeable)."""
    names = {c.name.lower() for c in table.columns}
    if table.kind != "view" and not table.without_rowid:
        if table.rowid_alias is not None:
            return f"{alias}.{quote_identifier(table.rowid_alias)}"
        for name in ("_rowid_", "rowid", "oid"):  # a column may take one of the names
            if name not in names:
                return f"{alias}.{name}"
    keys = table.primary_key if table.without_rowid and table.primary_key else \
        tuple(c.name for c in table.columns)
    return ", ".join(f"{alias}.{quote_identifier(k)}" for k in keys) or "1"


def _kind(column) -> str:
    from .sql import stored_kind

    return stored_kind(column)


def _json_value(column: str, kind: str) -> str:
    """A value inside json_object, from a column of the inner SELECT: JSON text stays JSON
    (nested embeddings, JSON columns), booleans become true/false."""
    if kind == "embed":  # always valid JSON
        return f"json({column})"
    if kind == "json":
        return f"CASE WHEN json_valid({column}) THEN json({column}) ELSE {column} END"
    if kind == "boolean":
        return (f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} THEN json('true') "
                f"ELSE json('false') END")
    return column


def _sql_text(name: str) -> str:
    return name.replace("'", "''")


# --- the whole JSON body of a read with embeddings ---------------------------------------------

def json_body_sql(sql: str, columns) -> str | None:
    """``sql`` (a read with embeddings, its output ``columns``) wrapped so that SQLite writes
    the whole JSON body: one row (the body's text, the number of rows). The embeddings' JSON is
    spliced in as text, never parsed again, and no row becomes Python objects: by string
    concatenation, since json_object() would parse each embedding's text once more
    (statement and rendering: one-to-many 236 → 160 µs, many-to-one 155 → 81; bench/README.md).
    Each value is written as the row path (representation.py) writes it. None when two output
    names are the same to SQLite (it matches names case-insensitively; a dict keeps the last)."""
    if len({c.name.lower() for c in columns}) != len(columns):
        return None
    parts = []
    for i, column in enumerate(columns):
        key = ("{" if i == 0 else ",") + _json_string(column.name) + ":"
        parts.append(f"'{_sql_text(key)}' || {_json_text(quote_identifier(column.name), column.kind)}")
    row = " || ".join(parts) + " || '}'"
    return f"SELECT '[' || COALESCE(group_concat({row}, ','), '') || ']', count(*) FROM ({sql})"


def _json_string(text: str) -> str:
    import orjson

    return orjson.dumps(text).decode()


def _json_text(column: str, kind: str) -> str:
    """The JSON text of one value, as representation.py renders it: embeddings as they are,
    JSON text as JSON, booleans by Python's truth. json_quote() refuses a BLOB (JSON has no
    such value): the caller then takes the row path, which writes it in base64."""
    if kind == "embed":
        return f"COALESCE({column}, 'null')"
    if kind == "json":
        return (f"(CASE WHEN typeof({column}) = 'text' AND json_valid({column}) THEN {column} "
                f"ELSE json_quote({column}) END)")
    if kind == "boolean":
        return (f"(CASE WHEN {column} IS NULL THEN 'null' WHEN CASE typeof({column}) "
                f"WHEN 'integer' THEN {column} <> 0 WHEN 'real' THEN {column} <> 0 "
                f"ELSE length({column}) > 0 END THEN 'true' ELSE 'false' END)")
    return f"json_quote({column})"


def embedded_tables(select: tuple, parent: Table | None = None) -> set[str]:
    """Names of every table an embedding in ``select`` of ``parent`` reads (for the
    allow-list)."""
    names: set[str] = set()
    for item in select:
        if type(item) is Embed:
            name = target_name(parent, item)
            names.add(name)
            related = parent.relations.get(name) if parent is not None else None
            names |= embedded_tables(item.select, related[0].target if related else None)
    return names


def check_embedded(allowed, table, names) -> None:
    """Embeddings read only allow-listed tables: another is answered as if it were not
    related at all (PGRST200), so the API never reveals which tables exist. Checked before
    the SQL is built: building names the candidates of an ambiguous relationship (PGRST201)
    and the columns of a table (42703), which would reveal a table outside the list."""
    for name in sorted(names):
        if name not in allowed:
            # the hint names the closest allow-listed related table only
            raise _unrelated(table.relation_name, name, _closest(table, name, allowed))


def _unrelated(parent: str, name: str, hint: str | None = None):
    return api_error("no_relationship", parent=parent, target=name[:200], hint=hint,
                     details=f"Searched for a foreign key relationship between '{parent}' and "
                             f"'{name[:200]}' in the schema, but no matches were found.")


# --- roles (--permissions-file, design/roles.md) -----------------------------------------------

def embeds_under_role(parent: Table, parent_rule, select: tuple, rule_of, claims) -> tuple:
    """``select`` with every embedding read as the role reads its table, at any depth: the
    table needs a rule with GET (no rule: PGRST200, as a table outside the allow-list; no GET:
    42501), its `*` becomes its readable columns, every column it names (select, filters,
    order, the foreign key columns the correlation compares) must be readable, and its row
    filter is ANDed to its filters. A many-to-many junction needs the same (its row filter
    then limits the links). Parent rows are the caller's business (its own rule).
    ``rule_of(name)``: the role's rule of a table (`policy.Access.rule`), None for none."""
    out = []
    for item in select:
        if type(item) is not Embed:
            out.append(item)
            continue
        rule = _readable_rule(rule_of, parent.relation_name, target_name(parent, item))
        rel = find_relationship(parent, item)
        target = rel.target
        if rel.kind == "m2m":
            junction_rule = _readable_rule(rule_of, parent.relation_name, rel.junction.name)
            parent_rule.check_readable(parent.name, (a for a, _ in rel.on))
            junction_rule.check_readable(rel.junction.name, (
                *(b for _, b in rel.on), *(a for a, _ in rel.junction_on)))
            rule.check_readable(target.name, (b for _, b in rel.junction_on))
            junction_filter, _ = junction_rule.read_filters(claims)
        else:
            parent_rule.check_readable(parent.name, (a for a, _ in rel.on))
            rule.check_readable(target.name, (b for _, b in rel.on))
            junction_filter = None
        rule.check_filters(target.name, item.filters, item.order)
        row_filter, _ = rule.read_filters(claims)
        filters = item.filters
        if row_filter is not None:
            filters = And((filters.items if filters is not None else ()) + (row_filter,))
        nested = embeds_under_role(target, rule, item.select, rule_of, claims)
        out.append(dataclasses.replace(
            item, filters=filters, junction_filters=junction_filter,
            select=rule.readable_select(target, nested) if nested else nested))
    return tuple(out)


def _readable_rule(rule_of, parent: str, name: str):
    rule = rule_of(name)
    if rule is None:
        raise _unrelated(parent, name)
    rule.require_verb("GET", name)
    return rule
