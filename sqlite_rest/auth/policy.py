"""Roles and row-level security: the permissions file (``--permissions-file``).

A YAML file maps a role (taken from a JWT claim) to what it may do, per table::

    role_claim: .role            # PostgREST's jwt-role-claim-key syntax
    anonymous: anon              # role of a request without a token (absent: 401)
    default_role: authenticated  # role of a token without the claim (absent: 403)
    roles:
      authenticated:
        notes:
          verbs: [GET, POST, PATCH, DELETE]
          read_columns: [id, owner_id, body]   # default: every column
          write_columns: [body, owner_id]      # default: every column
          rows: owner_id=eq.{sub}              # row filter(s), the API's filter language
          check: owner_id=eq.{sub}             # rows written must pass it (default: rows)
      admin:
        "*": {verbs: [GET, POST, PATCH, PUT, DELETE]}
    functions:
      authenticated: [my_notes]

`FILE_KEYS` and `TABLE_KEYS` document every key (the README's tables come from them).

Row filters are parsed once, when the file is loaded, by the request parser (query.py). A
``{claim}`` placeholder is a *value* of the parsed filter, filled per request with the claim's
value and bound as an SQL parameter like any filter value: a claim can never change the SQL
text. A claim the token lacks makes the filter match nothing.

Enforcement entry point: `TableRule.read_filters(claims)` (the filters to AND into every read
of the table, and the readable columns) — called per table, embedded tables included
(api/embedding.embeds_under_role); `TableRule.readable_select` / `check_readable` guard the
columns a query names.
"""
from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
from dataclasses import dataclass
from typing import Optional

import yaml

from ..api.operators import OPERATOR_BY_NAME, ValueKind
from ..api.query import (And, ColumnRef, Embed, Filter, Not, Or, QueryError, SelectItem, Star,
                         counts_rows,
                         parse_filter, parse_logic)
from ..errors import ApiError, api_error

VERBS = ("GET", "HEAD", "POST", "PATCH", "PUT", "DELETE")

#: The WSGI environ keys of a request under a permissions file, set by the table route before
#: anything reads or writes (api/routes.py), read by its reads and writes (api/writes.py):
#: the role's (TableRule, claims) for the table, and its `Access` (the rules of the other
#: tables, for embeddings).
ROLE_ENVIRON = "sqlite_rest.role"
ACCESS_ENVIRON = "sqlite_rest.access"

FILE_KEYS = {
    "role_claim": "Where the role is in the token: PostgREST's jwt-role-claim-key syntax "
                  "(`.role`, `.app.role`, `.\"x-role\"`, `.roles[0]`). Default `.role`.",
    "anonymous": "Role of a request without a token. Absent: such requests get 401 as "
                 "without a permissions file.",
    "default_role": "Role of a valid token without the role claim. Absent: such tokens get "
                    "403.",
    "roles": "Role name -> table name (or `\"*\"`: every allow-listed table) -> table rule. "
             "A table missing from a role's map answers 404 as an unknown table.",
    "functions": "Role name -> list of the `--functions-file` functions it may call under "
                 "/rpc/. Absent: no role may call any.",
}

TABLE_KEYS = {
    "verbs": "HTTP verbs allowed: GET (also HEAD), POST, PATCH, PUT, DELETE. Required.",
    "read_columns": "Columns the role may read, filter and order on; `select=*` shows only "
                    "these. Default: all.",
    "write_columns": "Columns the role may set (POST/PATCH/PUT body keys, `columns=`). "
                     "Default: all.",
    "rows": "Row filter(s) in the API's filter language (`owner_id=eq.{sub}`, "
            "`or=(a.eq.1,b.is.null)`), a string or a list (ANDed). `{claim}` is the token's "
            "claim (`{sub}`, `{app_metadata.org_id}`), bound as a value. Reads, PATCH, DELETE "
            "and the rows an upsert may overwrite are restricted to rows passing it.",
    "check": "Filter(s) every row written (INSERT, the new row of an UPDATE or upsert) must "
             "pass, else the request is rolled back with 42501. Default: `rows`; `[]` for "
             "none.",
}

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_CLAIM_PATH = re.compile(r"[A-Za-z0-9_$:@-]+(?:\.[A-Za-z0-9_$:@-]+)*\Z")
_LOGIC_KEYS = ("or", "and", "not.or", "not.and")
_NOTHING = Or(())  # a filter no row passes ("0")


class PermissionsFileError(ValueError):
    """The permissions file cannot be used: one line naming the file, role, table and key."""


# -- the role claim path ------------------------------------------------------------------

_CLAIM_STEP = re.compile(r'\.(?:"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_$@:-]+))|\[(\d+)\]')


def parse_claim_path(text: str) -> tuple:
    """PostgREST's jwt-role-claim-key: ``.a.b``, ``."x-y"``, ``.roles[0]`` -> steps."""
    steps: list = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _CLAIM_STEP.match(text, pos)
        if m is None:
            raise ValueError(f"cannot read {text!r} at position {pos + 1}: write e.g. .role, "
                             '.app.role, ."x-role" or .roles[0]')
        if m.group(3) is not None:
            steps.append(int(m.group(3)))
        elif m.group(1) is not None:
            steps.append(re.sub(r"\\(.)", r"\1", m.group(1)))
        else:
            steps.append(m.group(2))
        pos = m.end()
    if not steps:
        raise ValueError("the role claim path is empty")
    return tuple(steps)


_MISSING = object()


def claim_at(claims, steps) -> object:
    value = claims
    for step in steps:
        if type(step) is int:
            if type(value) is not list or step >= len(value):
                return _MISSING
            value = value[step]
        else:
            if type(value) is not dict or step not in value:
                return _MISSING
            value = value[step]
    return value


def _claim_text(value) -> Optional[str]:
    """A claim as the text of a filter value; None (no match) for objects, arrays, null."""
    t = type(value)
    if t is str:
        return value
    if t is bool:
        return "true" if value else "false"
    if t is int or t is float:
        return str(value)
    return None


# -- claims inside function SQL: request_claim('sub') --------------------------------------

_bound = threading.local()


@contextlib.contextmanager
def bound_claims(claims: Optional[dict]):
    """The claims `request_claim()` answers while the body runs on this thread (an RPC call
    binds them inside the work it runs, so a group commit led by another request's thread
    still sees the caller's own claims)."""
    previous = getattr(_bound, "claims", None)
    _bound.claims = claims
    try:
        yield
    finally:
        _bound.claims = previous


def request_claim(path):
    """SQL ``request_claim('sub')`` / ``request_claim('app_metadata.org_id')``: the calling
    request's claim (an object or array as JSON text, a boolean as 1/0), NULL when missing."""
    claims = getattr(_bound, "claims", None)
    if claims is None or type(path) is not str:
        return None
    value = claim_at(claims, tuple(int(s) if s.isdigit() else s for s in path.split(".")))
    if value is _MISSING or value is None:
        return None
    if type(value) is bool:
        return 1 if value else 0
    if type(value) in (dict, list):
        return json.dumps(value, separators=(",", ":"))
    return value


# -- row filters --------------------------------------------------------------------------


@dataclass(frozen=True)
class RowFilter:
    """The parsed row filter(s) of a rule, with the claim paths of its placeholders."""

    node: object                # And of the filters, placeholders left as `{path}` in values
    claims: tuple               # claim paths (tuples of keys) in order of first use

    def bind(self, claims: dict):
        """The filter with this request's claim values (a claim missing: matches nothing)."""
        if not self.claims:
            return self.node
        values = {}
        for path in self.claims:
            text = _claim_text(claim_at(claims or {}, path))
            if text is None:
                return _NOTHING
            values[".".join(map(str, path))] = text
        return _bind(self.node, tuple(sorted(values.items())))


class _Unmatchable(Exception):
    """A claim that cannot be written literally into its pattern: the filter matches nothing."""


def _literal(op: str, text: str) -> str:
    """A claim as literal text inside a value of `op`: a claim is data, never a pattern, so
    `*`, `%`, `_` in it match only themselves."""
    if op == "like":  # sql.like_to_glob reads \x as a literal x
        return re.sub(r"([\\%*_\[?])", r"\\\1", text)
    if op == "ilike":  # LIKE … ESCAPE '\'; sql.ilike_to_like turns every * into %
        if "*" in text:
            raise _Unmatchable()
        return re.sub(r"([\\%_])", r"\\\1", text)
    if op in ("match", "imatch"):
        return re.escape(text)
    return text


@functools.lru_cache(maxsize=4096)
def _bind(node, values: tuple):
    mapping = dict(values)

    def walk(n):
        t = type(n)
        if t is Filter:
            op = n.op

            def fill(text: str) -> str:
                return _PLACEHOLDER.sub(lambda m: _literal(op, mapping[m.group(1)]), text)

            v = n.value
            if type(v) is tuple:
                v = tuple(fill(item) for item in v)
            else:
                v = fill(v)
            return Filter(n.column, n.op, v, n.negated, n.quantifier)
        if t is Not:
            return Not(walk(n.item))
        return t(tuple(walk(i) for i in n.items))

    try:
        return walk(node)
    except _Unmatchable:
        return _NOTHING


def filter_columns(node) -> set:
    """Every column a logic tree names."""
    out: set = set()

    def walk(n):
        t = type(n)
        if t is Filter:
            out.add(n.column.name)
        elif t is Not:
            walk(n.item)
        else:
            for i in n.items:
                walk(i)
    walk(node)
    return out


def _parse_row_filters(texts, fail) -> RowFilter:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        fail("must be a filter string or a list of them")
    items = []
    claims: list = []
    for text in texts:
        key, eq, value = text.partition("=")
        key = key.strip()
        if not eq or not key:
            fail(f"{text!r} is not a filter: write column=op.value, e.g. owner_id=eq.{{sub}}")
        try:
            node = parse_logic(key, value) if key in _LOGIC_KEYS else parse_filter(key, value)
        except QueryError as exc:
            fail(f"{text!r}: {exc.message}" + (f" ({exc.details})" if exc.details else ""))
        _collect_placeholders(node, claims, fail, text)
        items.append(node)
    return RowFilter(And(tuple(items)), tuple(claims))


def _collect_placeholders(node, claims: list, fail, text: str) -> None:
    t = type(node)
    if t is Not:
        return _collect_placeholders(node.item, claims, fail, text)
    if t is not Filter:
        for i in node.items:
            _collect_placeholders(i, claims, fail, text)
        return
    values = node.value if type(node.value) is tuple else (node.value,)
    for value in values:
        for m in _PLACEHOLDER.finditer(value):
            kind = OPERATOR_BY_NAME[node.op].value
            if kind in (ValueKind.CONTAINER, ValueKind.KEYWORD):
                fail(f"{text!r}: a {{claim}} cannot stand in a value of {node.op}")
            path = m.group(1)
            if not _CLAIM_PATH.match(path):
                fail(f"{text!r}: {{{path}}} is not a claim name (write e.g. {{sub}} or "
                     "{app_metadata.org_id})")
            steps = tuple(int(s) if s.isdigit() else s for s in path.split("."))
            if steps not in claims:
                claims.append(steps)
        if "{" in _PLACEHOLDER.sub("", value) or "}" in _PLACEHOLDER.sub("", value):
            fail(f"{text!r}: unbalanced {{ or }} (braces always mean a claim here)")


# -- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TableRule:
    role: str
    table: str                       # the name in the file ("*" for every table)
    verbs: frozenset
    read_columns: Optional[frozenset]
    write_columns: Optional[frozenset]
    rows: Optional[RowFilter]
    check: Optional[RowFilter]
    anonymous: bool = False          # the role is the anonymous one (42501 is then 401)

    # -- errors ----------------------------------------------------------------------
    def denied(self, what: str) -> ApiError:
        return permission_denied(what, self.anonymous)

    def require_verb(self, method: str, table_name: str) -> None:
        verb = "GET" if method == "HEAD" else method
        if verb not in self.verbs:
            raise self.denied(f"table {table_name}")

    # -- reads ------------------------------------------------------------------------
    def read_filters(self, claims) -> tuple[object, Optional[frozenset]]:
        """The enforcement function: (filter to AND into every read of this table — a
        logic-tree node, or None —, the readable column names or None for all). Embedded
        tables call it too."""
        return (self.rows.bind(claims) if self.rows is not None else None), self.read_columns

    def write_check(self, claims):
        """The filter every written row must pass (None: no check)."""
        return self.check.bind(claims) if self.check is not None else None

    def check_readable(self, table_name: str, names) -> None:
        if self.read_columns is None:
            return
        for name in names:
            if name not in self.read_columns:
                raise self.denied(f"column {name} of table {table_name}")

    def check_writable(self, table_name: str, names) -> None:
        if self.write_columns is None:
            return
        for name in names:
            if name not in self.write_columns:
                raise self.denied(f"column {name} of table {table_name}")

    def readable_select(self, table, select: tuple) -> tuple:
        """`select` with `*` expanded to the readable columns; every named column checked."""
        if self.read_columns is None:
            return select
        out = []
        for item in select:
            if type(item) is Star:
                out.extend(SelectItem(ColumnRef(c.name)) for c in table.columns
                           if c.name in self.read_columns)
            elif type(item) is Embed:  # its own table's rule: embedding.embeds_under_role
                out.append(item)
            else:
                # (no column: count() of rows; a bare `count` naming no column is one too)
                if item.column is not None and not counts_rows(table, item):
                    self.check_readable(table.name, (item.column.name,))
                out.append(item)
        if not out:
            raise self.denied(f"table {table.name}")
        return tuple(out)

    def check_query(self, table_name: str, query) -> None:
        """Every column the query's filters, order, on_conflict name must be readable."""
        self.check_filters(table_name, query.filters, query.order)
        if query.on_conflict:
            self.check_readable(table_name, query.on_conflict)

    def check_filters(self, table_name: str, filters, order) -> None:
        """Every column of a logic tree (None: none) and of order terms must be readable."""
        if self.read_columns is None:
            return
        if filters is not None:
            self.check_readable(table_name, filter_columns(filters))
        self.check_readable(table_name, (t.column.name for t in order))


def permissions_markdown() -> str:
    """The permissions file's keys as Markdown (README, generated)."""
    rows = ["| key | meaning |", "|---|---|"]
    rows += [f"| `{k}` | {v} |" for k, v in FILE_KEYS.items()]
    rows += ["", "| table rule key | meaning |", "|---|---|"]
    rows += [f"| `{k}` | {v} |" for k, v in TABLE_KEYS.items()]
    return "\n".join(rows) + "\n"


def permission_denied(what: str, anonymous: bool) -> ApiError:
    return api_error("permission_denied", what=what, status=401 if anonymous else 403,
                     headers={"WWW-Authenticate": "Bearer"} if anonymous else None)


class Access:
    """One request's role: its rules and claims (a plain class: one is made per request)."""

    __slots__ = ("role", "claims", "anonymous", "policy")

    def __init__(self, role: str, claims: Optional[dict], anonymous: bool, policy: "Policy"):
        self.role = role
        self.claims = claims
        self.anonymous = anonymous
        self.policy = policy

    def rule(self, table_name: str) -> Optional[TableRule]:
        return self.policy.rule(self.role, table_name)

    def may_call(self, function_name: str) -> bool:
        return function_name in self.policy.functions.get(self.role, ())


class Policy:
    def __init__(self, path: str, role_claim: tuple, anonymous: Optional[str],
                 default_role: Optional[str], roles: dict, functions: dict,
                 allowed_tables: frozenset):
        self.path = path
        self.role_claim = role_claim
        self.anonymous = anonymous
        self.default_role = default_role
        self.roles = roles            # role -> {table or "*": TableRule}
        self.functions = functions    # role -> frozenset of function names
        self.allowed_tables = allowed_tables

    def rule(self, role: str, table_name: str) -> Optional[TableRule]:
        rules = self.roles.get(role)
        if rules is None or table_name not in self.allowed_tables:
            return None
        rule = rules.get(table_name)
        return rule if rule is not None else rules.get("*")

    def access(self, claims: Optional[dict]) -> Access:
        """The role of a request: claims None = no token."""
        if claims is None:
            if self.anonymous is None:
                raise api_error("jwt_missing", headers={"WWW-Authenticate": "Bearer"})
            return Access(self.anonymous, None, True, self)
        role = claim_at(claims, self.role_claim)
        if role is _MISSING or role is None:
            if self.default_role is None:
                raise api_error("permission_denied", message="the token names no role",
                                status=403,
                                hint="add the role claim, or set default_role in the "
                                     "permissions file")
            role = self.default_role
        if type(role) is not str or role not in self.roles:
            raise api_error("permission_denied",
                            message=f"role \"{str(role)[:100]}\" does not exist",
                            hint="the permissions file has no such role")
        return Access(role, claims, role == self.anonymous, self)

    def check_schema(self, schema) -> None:
        """Columns the file names must exist (PermissionsFileError)."""
        for role, rules in self.roles.items():
            for name, rule in rules.items():
                tables = ([schema.table(t) for t in sorted(self.allowed_tables)]
                          if name == "*" else [schema.table(name)])
                for table in tables:
                    if table is None:
                        continue
                    for key, names in (("read_columns", rule.read_columns),
                                       ("write_columns", rule.write_columns),
                                       ("rows", filter_columns(rule.rows.node)
                                        if rule.rows else ()),
                                       ("check", filter_columns(rule.check.node)
                                        if rule.check else ())):
                        for column in sorted(names or ()):
                            if table.column(column) is None:
                                raise PermissionsFileError(
                                    f"{self.path}: roles.{role}.{name}.{key}: table "
                                    f"{table.name} has no column {column!r}")


def load_policy(path: str, allowed_tables) -> Policy:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise PermissionsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PermissionsFileError(f"{path}: not valid YAML: "
                                   f"{str(exc).splitlines()[0]}") from None
    return parse_policy(data, path, frozenset(allowed_tables))


def parse_policy(data, path: str, allowed_tables: frozenset) -> Policy:
    def fail(where: str, message: str):
        raise PermissionsFileError(f"{path}: {where}: {message}")

    if not isinstance(data, dict):
        fail("top level", "expected a mapping with 'roles'")
    for key in data:
        if key not in FILE_KEYS:
            fail(str(key), f"unknown key (keys: {', '.join(FILE_KEYS)})")
    try:
        role_claim = parse_claim_path(str(data.get("role_claim", ".role")))
    except ValueError as exc:
        fail("role_claim", str(exc))
    roles_data = data.get("roles")
    if not isinstance(roles_data, dict) or not roles_data:
        fail("roles", "expected a mapping of role names to tables")
    anonymous = data.get("anonymous")
    default_role = data.get("default_role")
    for key, value in (("anonymous", anonymous), ("default_role", default_role)):
        if value is not None and (not isinstance(value, str) or value not in roles_data):
            fail(key, f"{value!r} is not a role of 'roles'")
    roles: dict = {}
    for role, tables in roles_data.items():
        if not isinstance(role, str) or not role:
            fail(f"roles.{role}", "a role name is a non-empty string")
        if tables is None:
            tables = {}
        if not isinstance(tables, dict):
            fail(f"roles.{role}", "expected a mapping of table names to rules")
        rules = {}
        for table, body in tables.items():
            where = f"roles.{role}.{table}"
            if table != "*" and table not in allowed_tables:
                fail(where, "the table is not allow-listed (--security-allow-table)")
            rules[table] = _parse_rule(role, table, body, where, fail,
                                       anonymous=role == anonymous)
        roles[role] = rules
    functions_data = data.get("functions") or {}
    if not isinstance(functions_data, dict):
        fail("functions", "expected a mapping of role names to function lists")
    functions = {}
    for role, names in functions_data.items():
        if role not in roles:
            fail(f"functions.{role}", "not a role of 'roles'")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            fail(f"functions.{role}", "expected a list of function names")
        functions[role] = frozenset(names)
    return Policy(path, role_claim, anonymous, default_role, roles, functions, allowed_tables)


def _names(value, where, fail) -> frozenset:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        fail(where, "expected a list of column names")
    return frozenset(value)


def _parse_rule(role, table, body, where, fail, anonymous: bool) -> TableRule:
    if not isinstance(body, dict):
        fail(where, "expected a mapping with 'verbs'")
    for key in body:
        if key not in TABLE_KEYS:
            fail(f"{where}.{key}", f"unknown key (keys: {', '.join(TABLE_KEYS)})")
    verbs = body.get("verbs")
    if not isinstance(verbs, list) or not verbs:
        fail(f"{where}.verbs", "expected a list of HTTP verbs, e.g. [GET]")
    upper = set()
    for verb in verbs:
        if not isinstance(verb, str) or verb.upper() not in VERBS:
            fail(f"{where}.verbs", f"unknown verb {verb!r} (verbs: {', '.join(VERBS)})")
        upper.add("GET" if verb.upper() == "HEAD" else verb.upper())
    read_columns = (_names(body["read_columns"], f"{where}.read_columns", fail)
                    if "read_columns" in body else None)
    write_columns = (_names(body["write_columns"], f"{where}.write_columns", fail)
                     if "write_columns" in body else None)

    def filters(key):
        value = body[key]
        if value is None or value == []:
            return None
        return _parse_row_filters(value, lambda m: fail(f"{where}.{key}", m))

    rows = filters("rows") if "rows" in body else None
    check = filters("check") if "check" in body else rows
    # A row filter may name a column the role cannot read: it is the server's filter.
    return TableRule(role, table, frozenset(upper), read_columns, write_columns, rows, check,
                     anonymous)
