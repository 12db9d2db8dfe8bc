"""The PostgREST query-string grammar: a recursive-descent parser to an AST.

Grammar (informal; ``name`` is an identifier or a double-quoted name)::

    field     := name ( ('->' | '->>') key )*          key := name | integer
    filter    := field '=' ['not.'] op ['(' ('any'|'all') ')'] '.' value
    logic     := ('or'|'and'|'not.or'|'not.and') '=' group
    group     := '(' term (',' term)* ')'
    term      := ['not.'] ('or'|'and') group
               | field '.' ['not.'] op ['(' ('any'|'all') ')'] '.' tvalue
    value     := text to the end                       (op with a scalar value)
               | '(' item (',' item)* ')'              (in)
               | '{' item (',' item)* '}'              (any/all)
    tvalue    := like value, but ends at ',' or ')'; '"…"' quotes it
    item      := '"' (char | '\\' char)* '"' | chars other than ',' and the closer
    select    := sitem (',' sitem)*     sitem := '*' | [alias ':'] field ['::' cast]
    order     := oterm (',' oterm)*
    oterm     := field ['.' ('asc'|'desc')] ['.' ('nullsfirst'|'nullslast')]
    columns   := name (',' name)*       (also on_conflict)

The AST is made of frozen (hashable) dataclasses so parsed queries can be
cached and used as cache keys by the SQL builder. Column names are *not*
checked here: that needs the schema and happens in `sql.py`.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson

from ..errors import ERRORS
from .operators import OPERATOR_BY_NAME, QUANTIFIERS, Operator, ValueKind

# --------------------------------------------------------------------------
# Errors (plain exceptions; the HTTP layer maps them by .status and .code)


class RequestError(Exception):
    """A client error found while reading the request; never a server bug. Its code and
    status come from its row of errors.ERROR_TABLE (``key``), the one vocabulary of errors;
    the message says what exactly was wrong."""

    key = "query_parse"

    def __init__(self, message: str, details: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.hint = hint

    @property
    def code(self) -> str | None:
        return ERRORS[self.key].code

    @property
    def status(self) -> int:
        return ERRORS[self.key].status

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message,
                "details": self.details, "hint": self.hint}


class QueryError(RequestError):
    """Unparsable query string, unknown operator, bad select/order/limit."""

    key = "query_parse"


class RangeError(RequestError):
    """A limit no range can satisfy (negative)."""

    key = "invalid_range"


class UnknownCastError(RequestError):
    """A cast to a type the API does not know (PostgreSQL's undefined_object)."""

    key = "unknown_cast"


class UnknownEmbedError(RequestError):
    """A parameter (``name.col=…``) for an embedded resource that select does not embed."""

    key = "unknown_embed"

    def __init__(self, name: str, details: str | None = None):
        super().__init__(f"'{shown_text(name, 100)}' is not an embedded resource in this request",
                         details=details,
                         hint=f"Verify that '{shown_text(name, 100)}' is included in the "
                              "'select' query parameter.")


class UnknownColumnError(RequestError):
    """A filter/select/order names a column the table does not have."""

    key = "unknown_column"


# --------------------------------------------------------------------------
# AST


@dataclass(frozen=True, slots=True)
class JsonStep:
    """One `->key` / `->>key` step; key is str (object label) or int (array index)."""

    key: str | int
    as_text: bool  # True for ->> (SQL value), False for -> (JSON text)


@dataclass(frozen=True, slots=True)
class ColumnRef:
    name: str
    json_path: tuple[JsonStep, ...] = ()

    @property
    def output_name(self) -> str:
        """The key PostgREST gives a selected field: the last JSON key that is not an array
        index (``data->tags->0`` is "tags"), else the column."""
        for step in reversed(self.json_path):
            if type(step.key) is str:
                return step.key
        return self.name


@dataclass(frozen=True, slots=True)
class Filter:
    column: ColumnRef
    op: str                      # canonical operator name (aliases resolved)
    value: str | tuple[str, ...]  # tuple for `in` and for (any)/(all); keyword for `is`
    negated: bool = False
    quantifier: str | None = None  # "any" | "all" | None


@dataclass(frozen=True, slots=True)
class And:
    items: tuple


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple


@dataclass(frozen=True, slots=True)
class Not:
    item: object


@dataclass(frozen=True, slots=True)
class Star:
    """`*`: every (non-hidden) column of the table, in table order."""


STAR = Star()


@dataclass(frozen=True, slots=True)
class SelectItem:
    column: ColumnRef | None  # None: count() of rows
    alias: str | None = None
    cast: str | None = None  # canonical cast name from CASTS (of the column, before any aggregate)
    aggregate: str | None = None  # one of AGGREGATES (PostgREST 12: total.sum())
    result_cast: str | None = None  # cast of the aggregate's result: total.sum()::int

    @property
    def output_name(self) -> str:
        if self.alias is not None:
            return self.alias
        if self.aggregate is not None:  # PostgREST names an aggregate after its function
            return self.aggregate
        return self.column.output_name


@dataclass(frozen=True, slots=True)
class Embed:
    """An embedded resource in select: ``[alias:][...]name[!hint][!inner](select)``, with the
    query parameters that name it (``name.col=op.v``, ``name.order``, ``name.limit``, …)."""
    name: str                      # the related table
    alias: str | None = None
    hint: str | None = None        # a foreign key column, constraint name or junction table
    inner: bool = False            # !inner: parents without a match are left out
    spread: bool = False           # ...name(cols): its columns join the parent's object
    select: tuple = (STAR,)
    filters: "And" = None          # filled from name.col=… parameters (an And)
    order: tuple = ()
    limit: int | None = None
    offset: int | None = None
    null_filter: bool | None = None  # name=is.null (True: no match) / not.is.null (False)
    #: many-to-many under a role: the junction table's row filter (roles, embedding.py)
    junction_filters: "And" = None

    @property
    def output_name(self) -> str:
        return self.alias if self.alias is not None else self.name


def has_aggregates(select: tuple) -> bool:
    """An aggregate anywhere in select, embeddings included (--aggregates-enabled gates all)."""
    return any((type(item) is SelectItem and item.aggregate is not None)
               or (type(item) is Embed and has_aggregates(item.select)) for item in select)


def count_fields(table, select: tuple) -> tuple:
    """``select`` with a bare ``count`` that names no column of ``table`` read as ``count()``.
    PostgreSQL reads ``t.count`` as ``count(t)``, so PostgREST answers ``comments(count)``
    with the rows' count (``[{"count": 3}]``) whatever --aggregates-enabled says, and
    supabase-style apps rely on it."""
    if not any(counts_rows(table, item) for item in select):
        return select
    return tuple(SelectItem(None, item.alias, None, "count", None)
                 if counts_rows(table, item) else item for item in select)


def counts_rows(table, item) -> bool:
    """``item`` is a bare ``count`` naming no column of ``table`` (`count_fields`)."""
    return (type(item) is SelectItem and item.column is not None
            and item.column.name == "count" and not item.column.json_path
            and item.cast is None and item.aggregate is None and table.column("count") is None)


#: Aggregate functions of select (PostgREST 12), switched on by --aggregates-enabled, and
#: their SQLite spelling.
AGGREGATES = {"sum": "SUM", "avg": "AVG", "min": "MIN", "max": "MAX", "count": "COUNT"}


@dataclass(frozen=True, slots=True)
class OrderTerm:
    column: ColumnRef
    descending: bool = False
    nulls_first: bool | None = None  # None = PostgREST default (last for ASC, first for DESC)


@dataclass(frozen=True, slots=True)
class ReadQuery:
    select: tuple = (STAR,)  # of Star | SelectItem
    filters: And = And(())
    order: tuple[OrderTerm, ...] = ()
    limit: int | None = None
    offset: int | None = None
    on_conflict: tuple[str, ...] | None = None
    columns: tuple[str, ...] | None = None


# Whitelisted casts: request spelling -> (SQLite CAST type or None, output kind).
# Output kind tells the HTTP layer how to render: "value", "json" (embed the
# text as JSON) or "boolean" (0/1 -> false/true). json/jsonb emit no CAST.
CASTS: dict[str, tuple[str | None, str]] = {
    "text": ("TEXT", "value"), "varchar": ("TEXT", "value"),
    "integer": ("INTEGER", "value"), "int": ("INTEGER", "value"),
    "int4": ("INTEGER", "value"), "int8": ("INTEGER", "value"),
    "bigint": ("INTEGER", "value"), "smallint": ("INTEGER", "value"),
    "real": ("REAL", "value"), "float": ("REAL", "value"), "float4": ("REAL", "value"),
    "float8": ("REAL", "value"), "double precision": ("REAL", "value"),
    "numeric": ("NUMERIC", "value"), "decimal": ("NUMERIC", "value"),
    "boolean": ("INTEGER", "boolean"), "bool": ("INTEGER", "boolean"),
    "json": (None, "json"), "jsonb": (None, "json"),
}

RESERVED_KEYS = frozenset({"select", "order", "limit", "offset", "or", "and",
                           "not.or", "not.and", "on_conflict", "columns"})

# A bare name: anything but the grammar's delimiters; '-' only when not '->'.
_NAME = re.compile(r'(?:[^.,:()"{}!\-]|-(?!>))+')
_SIMPLE_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_$]*\Z')
_INT_KEY = re.compile(r'-?[0-9]+\Z')
_NON_NEGATIVE_INT = re.compile(r'[0-9]+\Z')
_NEGATIVE_INT = re.compile(r"-[0-9]+\Z")
_LANGUAGE_WORD = re.compile(r"[A-Za-z_]*")
_NESTED_GROUP = re.compile(r"(not\.)?(or|and) *(?=\()")
# An unquoted list item / logic-tree value runs to the next ',' or closer.
_UNQUOTED_ITEM = {")": re.compile(r"[^,)]*"), "}": re.compile(r"[^,}]*")}
_OPERATOR_WORD = re.compile(r"[A-Za-z_]*")
_OPERATOR_TEXT = re.compile(r"[^.(),]*")
_QUANTIFIER_WORD = re.compile(r"[A-Za-z]*")
_CAST_WORD = re.compile(r"[A-Za-z0-9_ ]*")


def shown_text(text: str, limit: int = 100) -> str:
    """Request text quoted in an error message, cut to a readable length."""
    return text if len(text) <= limit else text[:limit] + "…"


# --------------------------------------------------------------------------
# Numbers: every integer the request spells (limit, offset, Range, Prefer, filter values, JSON
# indexes) becomes a Python int here and nowhere else, so none can reach SQLite beyond its
# 64 bits (apsw raises OverflowError) and int() never sees a text past Python's 4300-digit
# limit (ValueError). Both would otherwise be a 500.

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_DECIMAL = re.compile(r"[+-]?[0-9]+\Z")  # ASCII digits only: int() also reads '١٢' and '1_0'
_INT64_DIGITS = len(str(INT64_MAX))      # 19


def is_decimal(text: str) -> bool:
    """Whether `text` spells an integer in ASCII decimal (sign allowed), of any size."""
    return _DECIMAL.match(text) is not None


def int64(text: str) -> int | None:
    """The integer `text` spells in ASCII decimal, or None when it spells none or one that
    SQLite's 64-bit signed INTEGER cannot hold (then `is_decimal` tells the two apart)."""
    if len(text) < _INT64_DIGITS and text.isdigit() and text.isascii():
        return int(text)  # the common case (an id, a Content-Length), without the regex
    if _DECIMAL.match(text) is None:
        return None
    digits = text.lstrip("+-").lstrip("0")  # int() counts leading zeros towards its limit
    if len(digits) > _INT64_DIGITS:
        return None
    value = int(digits) if digits else 0
    if text[0] == "-":
        value = -value
    return value if INT64_MIN <= value <= INT64_MAX else None


class _Reader:
    """A cursor over one parameter's text; raises QueryError with its position."""

    __slots__ = ("text", "pos", "what")

    def __init__(self, text: str, what: str):
        self.text = text
        self.pos = 0
        self.what = what

    def fail(self, message: str, hint: str | None = None):
        shown = shown_text(self.text, 200)
        raise QueryError(
            f"failed to parse {self.what}: {message}",
            details=f"unexpected {self._here()} at position {self.pos + 1} of {shown!r}",
            hint=hint)

    def _here(self) -> str:
        if self.pos >= len(self.text):
            return "end of input"
        return repr(self.text[self.pos])

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.text.startswith(s, self.pos):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str, message: str | None = None, hint: str | None = None):
        if not self.accept(s):
            self.fail(message or f"expected {s!r}", hint)

    def skip_spaces(self):
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] == " ":
            pos += 1
        self.pos = pos

    # -- lexical elements -------------------------------------------------

    def quoted(self) -> str:
        """`"…"` with `\\` escaping the next character; returns the unescaped text."""
        text = self.text
        start = self.pos
        self.expect('"')
        out = []
        while True:
            end = self._find_quote_or_backslash(self.pos)
            if end < 0:
                self.pos = start
                self.fail("unterminated double quote", 'close the value with "')
            out.append(text[self.pos:end])
            if text[end] == "\\":
                if end + 1 >= len(text):
                    self.pos = end
                    self.fail("dangling backslash in quoted value")
                out.append(text[end + 1])
                self.pos = end + 2
            else:
                self.pos = end + 1
                return "".join(out)

    def _find_quote_or_backslash(self, pos: int) -> int:
        q = self.text.find('"', pos)
        b = self.text.find("\\", pos)
        if b < 0:
            return q
        if q < 0:
            return b
        return min(q, b)

    def name(self, what: str = "a column name") -> str:
        if self.peek('"'):
            value = self.quoted()
            if not value:
                self.fail(f"empty {what}")
            if "\x00" in value:
                self.fail(f"NUL character in {what}")
            return value
        m = _NAME.match(self.text, self.pos)
        if not m:
            self.fail(f"expected {what}")
        self.pos = m.end()
        value = m.group().strip(" ")
        if not value:
            self.fail(f"expected {what}")
        if "\x00" in value:
            self.fail(f"NUL character in {what}")
        return value

    def field(self) -> ColumnRef:
        self.skip_spaces()
        name = self.name()
        if not self.peek("->"):
            return ColumnRef(name)
        steps = []
        while self.peek("->"):
            as_text = self.peek("->>")
            self.pos += 3 if as_text else 2
            if self.peek('"'):
                key: str | int = self.quoted()
            else:
                m = _NAME.match(self.text, self.pos)
                if not m:
                    self.fail("expected a JSON key after '->'")
                self.pos = m.end()
                raw = m.group()
                key = raw
                if raw.startswith("-") and not _INT_KEY.match(raw):
                    self.pos = m.start()
                    self.fail("expected a JSON key or an array index after '->'",
                              hint='double-quote a key that starts with "-"')
                if _INT_KEY.match(raw):
                    key = int64(raw)
                    if key is None:
                        self.pos = m.start()
                        self.fail("JSON array index out of range",
                                  hint=f"an array index fits in 64 bits (at most {INT64_MAX})")
            if type(key) is str and "\x00" in key:
                self.fail("NUL character in a JSON key")
            steps.append(JsonStep(key, as_text))
        return ColumnRef(name, tuple(steps))

    def list_items(self, opener: str, closer: str, spaced: bool = False) -> tuple[str, ...]:
        """`(a,"b,c",d)` or `{…}`; unquoted items run to the next ',' or closer. ``spaced``
        (inside a logic tree): spaces around items are not part of them."""
        self.expect(opener, f"expected {opener!r} to open a list",
                    hint=f'write a list as {opener}a,b,"c,d"{closer}')
        items: list[str] = []
        if spaced:
            self.skip_spaces()
        if self.accept(closer):
            return ()
        text = self.text
        while True:
            if spaced:
                self.skip_spaces()
            item = None
            if self.peek('"'):
                start = self.pos
                try:
                    item = self.quoted()
                except QueryError:
                    # PostgREST reads a quote that is never closed as a plain character:
                    # in.(") is the one-character value ".
                    item, self.pos = None, start
            if item is None:
                end = _UNQUOTED_ITEM[closer].match(text, self.pos).end()
                item = text[self.pos:end]
                if spaced:
                    item = item.rstrip(" ")
                self.pos = end
            elif spaced:
                self.skip_spaces()
            items.append(item)
            if self.accept(","):
                continue
            self.expect(closer, f"expected ',' or {closer!r} in list",
                        hint='double-quote list values that contain ",.:()"')
            return tuple(items)


# --------------------------------------------------------------------------
# Filters


def _operator(reader: _Reader) -> tuple[Operator, bool, str | None]:
    """`[not.]op[(any|all)]` — returns (operator, negated, quantifier)."""
    negated = reader.accept("not.")
    start = reader.pos
    text = reader.text
    end = _OPERATOR_WORD.match(text, start).end()
    name = text[start:end]
    op = OPERATOR_BY_NAME.get(name)
    if op is None:
        known = ", ".join(sorted(OPERATOR_BY_NAME))
        name = text[start:_OPERATOR_TEXT.match(text, start).end()]
        reader.fail(f"unknown operator {shown_text(name, 40)!r}" if name
                    else "expected an operator",
                    hint=f"operators: {known}; negate with not.<op>")
    reader.pos = end
    quantifier = None
    if op.value is ValueKind.FULLTEXT and reader.accept("("):
        # fts(english): PostgreSQL's text search configuration; FTS5's tokenizer decides here
        lang_end = _LANGUAGE_WORD.match(text, reader.pos).end()
        if lang_end == reader.pos:
            reader.fail("expected a language name, e.g. fts(english)")
        reader.pos = lang_end
        reader.expect(")")
    elif reader.accept("("):
        qstart = reader.pos
        reader.pos = _QUANTIFIER_WORD.match(text, qstart).end()
        quantifier = text[qstart:reader.pos]
        if quantifier not in QUANTIFIERS:
            reader.pos = qstart
            reader.fail("expected (any) or (all) after the operator")
        reader.expect(")")
        if not op.quantifiable:
            reader.fail(f"operator {op.name!r} does not take ({quantifier})")
    reader.expect(".", f"expected '.' and a value after operator {op.name!r}")
    return op, negated, quantifier


def _filter_value(reader: _Reader, op: Operator, quantifier, in_group: bool):
    """The value after `op.`; at top level it runs to the end of the parameter."""
    if quantifier is not None:
        return reader.list_items("{", "}")
    if op.value is ValueKind.LIST:
        return reader.list_items("(", ")", spaced=in_group)
    if op.value is ValueKind.CONTAINER:
        return _container(reader, in_group)
    if in_group:  # PostgREST's logic trees allow spaces around values
        reader.skip_spaces()
        if reader.peek('"'):
            value = reader.quoted()
        else:
            end = _UNQUOTED_ITEM[")"].match(reader.text, reader.pos).end()
            value = reader.text[reader.pos:end].rstrip(" ")
            reader.pos = end
    else:
        value = reader.text[reader.pos:]
        reader.pos = len(reader.text)
    if op.value is ValueKind.KEYWORD:
        keyword = value.lower()
        if keyword not in op.keyword_map:
            reader.fail(f"{op.name} takes one of {', '.join(op.keyword_map)}, "
                        f"not {shown_text(value, 40)!r}")
        return keyword
    return value


def _container(reader: _Reader, in_group: bool) -> str:
    """cs/cd/ov's value as JSON text: a JSON array or object, or a PostgreSQL array literal
    `{a,b,"c,d"}` (its items as strings)."""
    if in_group:
        reader.skip_spaces()
    start = reader.pos
    if not (reader.peek("{") or reader.peek("[")):
        reader.fail("expected {…} or a JSON array or object",
                    hint='write tags=cs.{a,b} or data=cs.{"key":1}')
    end = _container_end(reader) if in_group else len(reader.text)
    text = reader.text[start:end]
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if type(value) in (list, dict):
        reader.pos = end
        return orjson.dumps(value).decode()
    if text.startswith("["):
        reader.fail("malformed JSON array")
    sub = _Reader(text, reader.what)
    items = sub.list_items("{", "}")
    if not sub.at_end():
        reader.pos = start + sub.pos
        reader.fail("unexpected text after the array literal")
    reader.pos = end
    return orjson.dumps(list(items)).decode()


def _container_end(reader: _Reader) -> int:
    """Where the bracketed value at ``reader.pos`` closes (quotes respected)."""
    text, depth, pos, quoted = reader.text, 0, reader.pos, False
    while pos < len(text):
        ch = text[pos]
        if quoted:
            if ch == "\\":
                pos += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    reader.pos = len(text)
    reader.fail("unclosed { or [ in the value")


def _filter_tail(reader: _Reader, column: ColumnRef, in_group: bool) -> Filter:
    op, negated, quantifier = _operator(reader)
    value = _filter_value(reader, op, quantifier, in_group)
    return Filter(column, op.name, value, negated, quantifier)


_ONE_VALUE_KINDS = frozenset({ValueKind.SCALAR, ValueKind.PATTERN, ValueKind.REGEX,
                              ValueKind.FULLTEXT})


@functools.lru_cache(maxsize=4096)
def parse_filter(key: str, value: str) -> Filter:
    """`col=[not.]op.value` (the key is a column, possibly with a JSON path)."""
    if _SIMPLE_NAME.match(key):
        column = ColumnRef(key)
    else:
        kreader = _Reader(key, f"filter column ({shown_text(key)})")
        column = kreader.field()
        if not kreader.at_end():
            kreader.fail("unexpected text after the column",
                         hint="a filter is written column=op.value, e.g. id=eq.5")
    dot = value.find(".")
    if dot > 0:  # fast path for the common `op.value` with a one-value operator
        op = OPERATOR_BY_NAME.get(value[:dot])
        if op is not None and op.value in _ONE_VALUE_KINDS:
            return Filter(column, op.name, value[dot + 1:])
    reader = _Reader(value, f"filter ({shown_text(key + '=' + value)})")
    f = _filter_tail(reader, column, in_group=False)
    if not reader.at_end():
        reader.fail("unexpected text after the list")
    return f


def _group(reader: _Reader, depth: int) -> tuple:
    if depth > 64:
        reader.fail("logic nested too deeply")
    reader.expect("(", "expected '(' to open a logic group",
                  hint="write or=(a.eq.1,b.gt.2)")
    items = []
    while True:
        items.append(_term(reader, depth))
        reader.skip_spaces()  # PostgREST allows spaces around a group's items
        if reader.accept(","):
            continue
        reader.expect(")", "expected ',' or ')' in logic group",
                      hint='double-quote values that contain "," or ")"')
        return tuple(items)


def _term(reader: _Reader, depth: int):
    reader.skip_spaces()
    m = _NESTED_GROUP.match(reader.text, reader.pos)
    if m:  # [not.]or( / [not.]and(, with spaces before the '(' as PostgREST allows
        reader.pos = m.end(2)
        reader.skip_spaces()
        items = _group(reader, depth + 1)
        node = Or(items) if m.group(2).endswith("or") else And(items)
        return Not(node) if m.group(1) else node
    column = reader.field()
    reader.expect(".", "expected '.' after the column in a logic term",
                  hint="a logic term is written column.op.value, e.g. id.eq.5")
    return _filter_tail(reader, column, in_group=True)


@functools.lru_cache(maxsize=1024)
def parse_logic(key: str, value: str):
    """`or=(…)`, `and=(…)`, `not.or=(…)`, `not.and=(…)` -> Or / And / Not(…)."""
    negate = key.startswith("not.")
    kind = key[4:] if negate else key
    if kind not in ("or", "and"):
        raise QueryError(f"unknown logic operator {shown_text(key)!r}",
                         hint="use or, and, not.or, not.and")
    reader = _Reader(value, f"logic tree ({shown_text(key + '=' + value)})")
    items = _group(reader, 0)
    if not reader.at_end():
        reader.fail("unexpected text after the logic group")
    node = Or(items) if kind == "or" else And(items)
    return Not(node) if negate else node


# --------------------------------------------------------------------------
# select, order, columns


def _cast(reader: _Reader) -> str:
    start = reader.pos
    text = reader.text
    end = _CAST_WORD.match(text, start).end()
    name = text[start:end].strip().lower()
    if not name:
        reader.fail("expected a type after '::'", hint=f"casts: {', '.join(CASTS)}")
    if name not in CASTS:
        raise UnknownCastError(f"type \"{shown_text(name, 40)}\" does not exist",
                               details=f"in {shown_text(text, 80)!r}",
                               hint=f"casts: {', '.join(CASTS)}")
    reader.pos = end
    return name


_EMBED_HINT = "select columns, aggregates (total.sum()) or embedded resources (authors(name))"
_AGGREGATE_CALL = re.compile(r"(sum|avg|min|max|count)\(\)")


def _result_cast(reader: _Reader) -> str | None:
    return _cast(reader) if reader.accept("::") else None


@functools.lru_cache(maxsize=1024)
def parse_select(value: str) -> tuple:
    """`*`, `a,b`, `alias:col`, `col::text`, `alias:data->a->>b::int`."""
    if value.strip() == "":
        return (Star(),)
    reader = _Reader(value, f"select ({shown_text(value)})")
    items = _select_list(reader, depth=0)
    if not reader.at_end():
        reader.fail("unexpected ')' in select")
    return items


def _select_list(reader: _Reader, depth: int) -> tuple:
    """Select items up to the end of the text (depth 0) or the ')' closing an embed."""
    if depth > 16:
        reader.fail("embedding nested too deeply")
    items = []
    while True:
        reader.skip_spaces()
        if reader.accept("*"):
            items.append(Star())
        elif reader.accept("..."):
            items.append(_embed(reader, None, depth, spread=True))
        else:
            column = reader.field()
            alias = None
            if reader.peek(":") and not reader.peek("::"):
                reader.pos += 1
                if column.json_path:
                    reader.fail("an alias must be a plain name")
                alias = column.name
                if reader.accept("..."):
                    reader.fail("a spread embedding takes no alias")
                column = reader.field()
            if not column.json_path and (reader.peek("(") or reader.peek("!")) \
                    and not (column.name == "count" and reader.peek("()")):
                items.append(_embed(reader, alias, depth, name=column.name))
            elif column.name == "count" and not column.json_path and reader.accept("()"):
                items.append(SelectItem(None, alias, None, "count", _result_cast(reader)))
            else:
                cast = None
                if reader.accept("::"):
                    cast = _cast(reader)
                aggregate = None
                if reader.accept("."):
                    start = reader.pos
                    m = _AGGREGATE_CALL.match(reader.text, start)
                    if not m:
                        reader.fail("expected an aggregate: sum(), avg(), min(), max() or "
                                    "count()", hint=_EMBED_HINT)
                    aggregate = m.group(1)
                    reader.pos = m.end()
                items.append(SelectItem(column, alias, cast, aggregate,
                                        _result_cast(reader) if aggregate else None))
            if reader.peek("(") or reader.peek("!") or reader.peek("."):
                reader.fail("unexpected character in select", hint=_EMBED_HINT)
        reader.skip_spaces()
        if reader.at_end() or (depth and reader.peek(")")):
            return tuple(items)
        reader.expect(",", "expected ',' between selected columns", hint=_EMBED_HINT)


def _embed(reader: _Reader, alias, depth: int, name: str | None = None,
           spread: bool = False) -> Embed:
    if name is None:
        name = reader.name("an embedded resource")
    hint, inner = None, False
    while reader.accept("!"):
        word = reader.name("a foreign key, constraint or 'inner' after '!'")
        if word == "inner":
            inner = True
        elif word == "left":
            pass
        elif hint is None:
            hint = word
        else:
            reader.fail("two hints for one embedding")
    reader.expect("(", "expected '(' and the embedded resource's columns",
                  hint="write e.g. authors(name) or authors(*)")
    reader.skip_spaces()
    # name() selects nothing: the embedding only filters its parent (!inner, is.null)
    select = () if reader.peek(")") else _select_list(reader, depth + 1)
    reader.expect(")", "expected ')' closing the embedded resource")
    return Embed(name, alias, hint, inner, spread, select, And(()))


@functools.lru_cache(maxsize=1024)
def parse_order(value: str) -> tuple[OrderTerm, ...]:
    """`a.desc.nullslast,b` -> OrderTerm tuple."""
    reader = _Reader(value, f"order ({shown_text(value)})")
    terms = []
    while True:
        column = reader.field()
        descending = False
        nulls_first = None
        if reader.accept("."):
            if reader.accept("asc"):
                pass
            elif reader.accept("desc"):
                descending = True
            elif reader.accept("nullsfirst"):
                nulls_first = True
            elif reader.accept("nullslast"):
                nulls_first = False
            else:
                reader.fail("expected asc, desc, nullsfirst or nullslast",
                            hint="write order=col.desc.nullslast")
            if nulls_first is None and reader.accept("."):
                if reader.accept("nullsfirst"):
                    nulls_first = True
                elif reader.accept("nullslast"):
                    nulls_first = False
                else:
                    reader.fail("expected nullsfirst or nullslast")
        terms.append(OrderTerm(column, descending, nulls_first))
        reader.skip_spaces()
        if reader.at_end():
            return tuple(terms)
        reader.expect(",", "expected ',' between order terms")


@functools.lru_cache(maxsize=1024)
def parse_columns(value: str, what: str = "columns") -> tuple[str, ...]:
    """`a,b,"c d"` -> names (used by `columns` and `on_conflict`)."""
    reader = _Reader(value, f"{what} ({shown_text(value)})")
    names = []
    while True:
        reader.skip_spaces()
        names.append(reader.name())
        reader.skip_spaces()
        if reader.at_end():
            return tuple(names)
        reader.expect(",", f"expected ',' between {what} names")


def parse_on_conflict(value: str) -> tuple[str, ...]:
    return parse_columns(value, "on_conflict")


def _non_negative(key: str, value: str) -> int:
    number = int64(value) if _NON_NEGATIVE_INT.match(value) else None
    if number is None and _NEGATIVE_INT.match(value):
        # PostgREST: a negative offset is a no-op, a negative limit an unsatisfiable range.
        if key == "offset":
            return 0
        raise RangeError("Requested range not satisfiable",
                         details="Limit should be greater than or equal to zero.")
    if number is None:
        raise QueryError(f"failed to parse {key} parameter ({shown_text(value)})",
                         details=f"{key} must be a non-negative integer of at most {INT64_MAX}",
                         hint=f"write {key}=10")
    return number


# --------------------------------------------------------------------------
# The whole query string


def parse_read_query(args) -> ReadQuery:
    """Parse request.args.items(multi=True) (in order) into a ReadQuery.

    Repeated filters and logic groups are ANDed; for select/order/limit/
    offset/on_conflict/columns the last occurrence wins.
    """
    return _parse_read_query(tuple(args))


@functools.lru_cache(maxsize=4096)
def _parse_read_query(args: tuple[tuple[str, str], ...]) -> ReadQuery:
    select = (STAR,)
    filters = []
    order = ()
    limit = offset = None
    on_conflict = columns = None
    embedded: list = []  # (path of embed names, key, value) of name.key=value parameters
    for key, value in args:
        if ("." in key and key not in RESERVED_KEYS and not key.startswith('"')
                and "->" not in key.split(".", 1)[0]):
            *path, leaf = _embedded_key(key)
            embedded.append((tuple(path), leaf, value))
        elif key not in RESERVED_KEYS:
            filters.append(parse_filter(key, value))
        elif key == "select":
            select = parse_select(value)
        elif key == "order":
            order = parse_order(value)
        elif key == "limit":
            limit = _non_negative(key, value)
        elif key == "offset":
            offset = _non_negative(key, value)
        elif key == "on_conflict":
            on_conflict = parse_on_conflict(value)
        elif key == "columns":
            columns = parse_columns(value)
        else:  # or, and, not.or, not.and
            filters.append(parse_logic(key, value))
    if any(type(item) is Embed for item in select):
        select, filters = _attach_embedded(select, filters, embedded, ())
    elif embedded:
        raise UnknownEmbedError(embedded[0][0][0])
    return ReadQuery(select, And(tuple(filters)), order, limit, offset, on_conflict, columns)


def _embedded_key(key: str) -> list[str]:
    """``books.authors.name`` -> ['books', 'authors', 'name']; ``books.not.or`` keeps
    ``not.or`` whole."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-2] == "not" and parts[-1] in ("or", "and"):
        parts[-2:] = ["not." + parts[-1]]
    if len(parts) < 2 or not all(parts):
        raise QueryError(f"failed to parse the parameter {shown_text(key)!r}",
                         hint="an embedded resource's parameter is name.column=op.value")
    return parts


def _attach_embedded(select: tuple, filters: list, embedded: list, where: tuple):
    """Give each Embed of ``select`` its parameters (and `name=is.null` filters of the level
    above), recursively. Unclaimed parameters are an error."""
    names = {item.output_name: item for item in select if type(item) is Embed}
    mine = {name: [] for name in names}
    for path, leaf, value in embedded:
        if path[0] not in names:  # PostgREST names the unknown level alone: 'tasks2'
            raise UnknownEmbedError(path[0])
        mine[path[0]].append((path[1:], leaf, value))
    kept = []
    null_filters = {}
    for f in filters:
        if (type(f) is Filter and f.column.name in names and not f.column.json_path
                and f.op == "is" and f.value in ("null", "not_null")):
            null_filters[f.column.name] = (f.value == "null") != f.negated
        else:
            kept.append(f)
    out = []
    for item in select:
        if type(item) is not Embed:
            out.append(item)
            continue
        params = mine[item.output_name]
        deeper = [(p, leaf, v) for p, leaf, v in params if p]
        here = [(leaf, v) for p, leaf, v in params if not p]
        sub_filters, order, limit, offset = [], (), None, None
        for leaf, value in here:
            if leaf == "order":
                order = parse_order(value)
            elif leaf == "limit":
                limit = _non_negative("limit", value)
            elif leaf == "offset":
                offset = _non_negative("offset", value)
            elif leaf in ("or", "and", "not.or", "not.and"):
                sub_filters.append(parse_logic(leaf, value))
            elif leaf in RESERVED_KEYS:
                raise QueryError(f"{leaf} does not apply to an embedded resource",
                                 details=f"in {item.output_name}.{leaf}")
            else:
                sub_filters.append(parse_filter(leaf, value))
        sub_select, sub_filters = _attach_embedded(item.select, sub_filters, deeper,
                                                   where + (item.output_name,))
        out.append(Embed(item.name, item.alias, item.hint, item.inner, item.spread, sub_select,
                         And(tuple(sub_filters)), order, limit, offset,
                         null_filters.get(item.output_name)))
    return tuple(out), kept


# --------------------------------------------------------------------------
# Query shapes: the query string with its filter values lifted out
#
# Requests that differ only in filter values (`id=eq.1`, `id=eq.2`, …) share one shape, so
# everything derived from the shape (AST, SQL text, output columns) is built once and each
# request only binds its values. Only values whose SQL does not depend on the text are lifted:
# a plain column name and a one-value comparison operator (eq, gt, …). Everything else stays
# verbatim in the shape.

#: A lifted entry of a shape is (key, canonical operator name, None); a verbatim entry is
#: (key, value). The lengths differ, so the two can never be confused.
LIFTED = None


def query_pairs(query_string: str) -> list[tuple[str, str]]:
    """The (key, value) pairs of a raw QUERY_STRING, decoded like werkzeug's request.args
    ('+' is a space, %XX escapes, bad UTF-8 replaced), in order."""
    if not query_string.isascii():  # PEP 3333: raw bytes arrive as latin-1 text
        query_string = query_string.encode("latin-1").decode("utf-8", "replace")
    if "%" in query_string or "+" in query_string:
        return parse_qsl(query_string, keep_blank_values=True)
    # Nothing to unescape: the same result as parse_qsl without its per-item unquote().
    pairs = []
    for item in query_string.split("&"):
        if item:
            key, _, value = item.partition("=")
            pairs.append((key, value))
    return pairs


def query_shape(pairs) -> tuple[tuple, tuple[str, ...]]:
    """(shape, lifted values) of decoded query pairs; see `LIFTED`."""
    shape = []
    values = []
    for key, value in pairs:
        if key not in RESERVED_KEYS and _SIMPLE_NAME.match(key):
            dot = value.find(".")
            if dot > 0:
                op = OPERATOR_BY_NAME.get(value[:dot])
                if op is not None and op.value is ValueKind.SCALAR:
                    shape.append((key, op.name, LIFTED))
                    values.append(value[dot + 1:])
                    continue
        shape.append((key, value))
    return tuple(shape), tuple(values)


def shape_pairs(shape: tuple, values) -> list[tuple[str, str]]:
    """The query pairs of a shape with `values` put back in the lifted places."""
    values = iter(values)
    return [(entry[0], entry[1] + "." + next(values)) if len(entry) == 3 else entry
            for entry in shape]


def lifted_columns(shape: tuple) -> tuple[str, ...]:
    """The column of each lifted value, in order."""
    return tuple(entry[0] for entry in shape if len(entry) == 3)
