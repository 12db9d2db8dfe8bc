"""The filter operators of the query string, as one declarative table.

Both the parser (`query.py`: which names exist, how the value after the
operator is read) and the SQL builder (`sql.py`: which SQL to emit) read this
table, and so does the documentation (`operators_markdown()`), so the three can
never disagree.

SQL templates use ``{col}`` for the (already validated and quoted) column
expression and ``?`` for each bound value. Nothing from the request is ever
pasted into a template.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ValueKind(enum.Enum):
    """How the text after ``op.`` is read."""

    SCALAR = "scalar"    # one value, coerced by the column's affinity
    PATTERN = "pattern"  # one text value, translated to a LIKE/GLOB pattern
    REGEX = "regex"      # one text value, a Python `re` pattern
    LIST = "list"        # a parenthesised list: in.(1,2,"a,b")
    KEYWORD = "keyword"  # one of a fixed set of words: is.null
    FULLTEXT = "fulltext"  # search text for an FTS5 index (api/fulltext.py)
    CONTAINER = "container"  # a PostgreSQL array literal {a,b} or a JSON array/object,
                             # bound as one JSON text


@dataclass(frozen=True)
class Operator:
    """One filter operator.

    name: the canonical PostgREST name.
    aliases: other accepted spellings (the Go server's ``ge``/``le``).
    value: how the value is parsed and bound.
    sql: SQL template for one value (``{col}``, ``?``); for LIST ``{list}`` is
        replaced by ``?, ?, …``.
    either_sql: template used when a numeric-looking value is compared with a
        column of unknown affinity and must match as text *or* as number
        (two bound values); None = bind the number only.
    keywords: for KEYWORD operators, word -> SQL template.
    quantifiable: accepts the ``(any)``/``(all)`` modifier with ``{a,b}``.
    priority: P0 (needed by the PostgREST clients) / P1.
    doc: one line for the docs.
    postgrest: what PostgREST generates, for readers who know it.
    """

    name: str
    value: ValueKind
    sql: str
    doc: str
    postgrest: str
    priority: str = "P0"
    aliases: tuple[str, ...] = ()
    either_sql: str | None = None
    keywords: tuple[tuple[str, str], ...] = ()
    quantifiable: bool = False
    keyword_map: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "keyword_map", dict(self.keywords))


OPERATORS: tuple[Operator, ...] = (
    Operator("eq", ValueKind.SCALAR, "{col} = ?", "equals", "=",
             either_sql="{col} IN (?, ?)", quantifiable=True),
    Operator("neq", ValueKind.SCALAR, "{col} <> ?", "not equal", "<>",
             either_sql="{col} NOT IN (?, ?)", quantifiable=True),
    Operator("gt", ValueKind.SCALAR, "{col} > ?", "greater than", ">", quantifiable=True),
    Operator("gte", ValueKind.SCALAR, "{col} >= ?", "greater than or equal", ">=",
             aliases=("ge",), quantifiable=True),
    Operator("lt", ValueKind.SCALAR, "{col} < ?", "less than", "<", quantifiable=True),
    Operator("lte", ValueKind.SCALAR, "{col} <= ?", "less than or equal", "<=",
             aliases=("le",), quantifiable=True),
    Operator("like", ValueKind.PATTERN, "{col} GLOB ?",
             "case-sensitive pattern; `%` or `*` = any run, `_` = one character "
             "(SQLite `GLOB` with translated wildcards)", "LIKE", quantifiable=True),
    Operator("ilike", ValueKind.PATTERN, "{col} LIKE ? ESCAPE '\\'",
             "case-insensitive (ASCII) pattern; `%` or `*` = any run, `_` = one character "
             "(SQLite `LIKE`)", "ILIKE", quantifiable=True),
    Operator("match", ValueKind.REGEX, "{col} REGEXP ?",
             "matches a regular expression (Python `re` syntax; a pattern that "
             "backtracks for over 0.1 s on one value is refused)", "~",
             priority="P1", quantifiable=True),
    Operator("imatch", ValueKind.REGEX, "sqlite_rest_imatch(?, {col})",
             "matches a regular expression, ignoring case", "~*",
             priority="P1", quantifiable=True),
    Operator("in", ValueKind.LIST, "{col} IN ({list})",
             'one of a list: `in.(1,2,"a,b")`; quote values holding `,.:()` with `"`, '
             'escape `"` and `\\` with `\\`', "IN"),
    Operator("is", ValueKind.KEYWORD, "",
             "`is.null`, `is.not_null`, `is.true`, `is.false`, `is.unknown`", "IS",
             keywords=(("null", "{col} IS NULL"), ("not_null", "{col} IS NOT NULL"),
                       ("true", "{col} IS TRUE"), ("false", "{col} IS FALSE"),
                       ("unknown", "{col} IS NULL"))),
    # Containment on JSON arrays and objects. The wanted value is bound as JSON; elements
    # compare as text ({1} matches [1]), object entries by key and value. A column that is
    # NULL or not JSON gives NULL, as in PostgreSQL (so not.cs does not match it either).
    Operator("cs", ValueKind.CONTAINER,
             "(CASE WHEN json_valid({col}) THEN NOT EXISTS (SELECT 1 FROM json_each(?) AS w "
             "WHERE NOT EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid({col}) THEN {col} "
             "END) AS h WHERE (typeof(w.key) = 'integer' OR h.key = w.key) "
             "AND CAST(h.value AS TEXT) IS CAST(w.value AS TEXT))) END)",
             "contains every element (array) or entry (object): `tags=cs.{a,b}`, "
             "`data=cs.{\"k\":1}`", "@>"),
    Operator("cd", ValueKind.CONTAINER,
             "(CASE WHEN json_valid({col}) THEN NOT EXISTS (SELECT 1 FROM json_each(CASE WHEN "
             "json_valid({col}) THEN {col} END) AS h WHERE NOT EXISTS (SELECT 1 FROM json_each(?) "
             "AS w WHERE (typeof(h.key) = 'integer' OR h.key = w.key) "
             "AND CAST(h.value AS TEXT) IS CAST(w.value AS TEXT))) END)",
             "is contained in: every element (entry) of the column is in the value: "
             "`tags=cd.{a,b,c}`", "<@"),
    Operator("ov", ValueKind.CONTAINER,
             "(CASE WHEN json_valid({col}) THEN EXISTS (SELECT 1 FROM json_each(CASE WHEN "
             "json_valid({col}) THEN {col} END) AS h, json_each(?) AS w "
             "WHERE CAST(h.value AS TEXT) = CAST(w.value AS TEXT)) END)",
             "overlaps: has an element in common with the value: `tags=ov.{a,z}`", "&&"),
    # Full-text search through FTS5 (api/fulltext.py builds the MATCH query; sql.py the SQL).
    # An optional language, fts(english).cat, is accepted and left to the FTS5 tokenizer.
    Operator("fts", ValueKind.FULLTEXT, "{col} MATCH ?",
             "full-text search, to_tsquery syntax: `fts.fat & (cat | rat)`, `!`, `<->`, `:*`",
             "@@ to_tsquery"),
    Operator("plfts", ValueKind.FULLTEXT, "{col} MATCH ?",
             "full-text search, every word: `plfts.fat cats`", "@@ plainto_tsquery"),
    Operator("phfts", ValueKind.FULLTEXT, "{col} MATCH ?",
             "full-text search, the words as a phrase: `phfts.fat cat`", "@@ phraseto_tsquery"),
    Operator("wfts", ValueKind.FULLTEXT, "{col} MATCH ?",
             'full-text search, web syntax: `wfts."fat cat" or rat -dog`',
             "@@ websearch_to_tsquery"),
    Operator("isdistinct", ValueKind.SCALAR, "{col} IS NOT ?",
             "is distinct from (NULL-safe not-equal)", "IS DISTINCT FROM",
             priority="P1", either_sql="({col} IS NOT ? AND {col} IS NOT ?)"),
)

# name or alias -> Operator
OPERATOR_BY_NAME: dict[str, Operator] = {}
for _op in OPERATORS:
    for _name in (_op.name, *_op.aliases):
        OPERATOR_BY_NAME[_name] = _op
del _op, _name

# Modifiers accepted as `op(any)` / `op(all)` and how the terms are joined.
QUANTIFIERS: dict[str, str] = {"any": " OR ", "all": " AND "}


def operators_markdown() -> str:
    """The operator table as Markdown, for the README."""
    lines = [
        "| operator | aliases | meaning | SQLite | PostgREST | priority |",
        "|---|---|---|---|---|---|",
    ]
    for op in OPERATORS:
        if op.value is ValueKind.KEYWORD:
            sql = ", ".join(f"`{t.format(col='col')}`" for _, t in op.keywords)
        else:
            sql = f"`{op.sql.format(col='col', list='?, …')}`"
        doc = op.doc + (" — accepts `(any)`/`(all)`: `" + op.name + "(any).{a,b}`"
                        if op.quantifiable else "")
        aliases = ", ".join(f"`{a}`" for a in op.aliases)
        lines.append(f"| `{op.name}` | {aliases} | {doc} | {sql.replace('|', '&#124;')} "
                     f"| `{op.postgrest}` | {op.priority} |")
    lines.append("")
    lines.append("Every operator can be negated with `not.`: `col=not.eq.5` → `NOT (col = ?)`.")
    return "\n".join(lines) + "\n"
