"""The `Prefer` request header (RFC 7240, PostgREST's vocabulary).

`PREFERENCES` is the declarative table of accepted keys and values. A request may send several
Prefer headers, each with several comma-separated preferences. Unknown keys or values are
ignored (`handling=lenient`, the default) or refused with 400 PGRST122 (`handling=strict`).
What the server applied is echoed in `Preference-Applied`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from ..errors import api_error
from .query import int64


@dataclass(frozen=True)
class Preference:
    key: str
    #: Accepted values; None means "a non-negative integer".
    values: Optional[tuple[str, ...]]
    #: Value in effect when the client sends none.
    default: Optional[str]
    #: HTTP verbs on which the preference means something (it is echoed only there).
    verbs: frozenset[str]
    doc: str


_READ = frozenset({"GET", "HEAD"})
_WRITE = frozenset({"POST", "PATCH", "PUT", "DELETE"})
#: A function call (/rpc/<name>, any verb): PostgREST echoes count, tx, handling and
#: max-affected there, never return/missing/resolution.
RPC = "RPC"

#: In PostgREST's order: Preference-Applied lists the applied preferences in this order,
#: whatever order the client sent them in.
PREFERENCES: dict[str, Preference] = {p.key: p for p in (
    Preference("resolution", ("merge-duplicates", "ignore-duplicates"), None, frozenset({"POST"}),
               "POST upsert on ?on_conflict= (default: the primary key; a table with neither "
               "ignores it)"),
    Preference("missing", ("default", "null"), "null", frozenset({"POST", "PATCH"}),
               "keys missing from some objects of a bulk body take the column DEFAULT"),
    Preference("return", ("minimal", "headers-only", "representation"), "minimal", _WRITE,
               "response body of a write: none, none + Location (POST), or the affected rows"),
    Preference("count", ("exact", "planned", "estimated"), None, _READ | _WRITE | {RPC},
               "fill the total of Content-Range (planned/estimated fall back to exact)"),
    Preference("tx", ("commit", "rollback"), "commit", _WRITE | {RPC},
               "rollback: run the write, answer as usual, then roll it back"),
    Preference("handling", ("strict", "lenient"), "lenient", _READ | _WRITE | {RPC},
               "strict: an invalid preference is a 400 PGRST122 instead of being ignored"),
    Preference("timezone", None, None, frozenset(), "accepted for compatibility; SQLite has none"),
    Preference("max-affected", None, None, frozenset({"PATCH", "DELETE", RPC}),
               "with handling=strict: more affected rows (a function: more result rows) -> "
               "400 PGRST124, rolled back"),
    Preference("params", ("single-object",), None, frozenset({RPC}),
               "/rpc: pass the whole JSON body to the function's one `json` parameter"),
)}


@dataclass
class Preferences:
    return_: str = "minimal"
    resolution: Optional[str] = None
    missing: str = "null"
    count: Optional[str] = None
    handling: str = "lenient"
    max_affected: Optional[int] = None
    tx: str = "commit"
    params: Optional[str] = None
    #: The valid preferences in effect ("key=value", the first of each key), for
    #: Preference-Applied.
    given: tuple[str, ...] = ()
    #: Invalid preferences as sent (ignored unless handling=strict).
    invalid: tuple[str, ...] = ()

    def applied(self, method: str, *, extra_skip: Iterable[str] = ()) -> Optional[str]:
        """Value of Preference-Applied for `method`, or None: in PREFERENCES' order."""
        skip = set(extra_skip)
        given = {item.split("=", 1)[0]: item for item in self.given}
        out = [given[key] for key, pref in PREFERENCES.items()
               if key in given and method in pref.verbs and key not in skip]
        return ", ".join(out) if out else None


DEFAULT = Preferences()
_ATTRIBUTES = {"return": "return_", "max-affected": "max_affected"}


def parse_prefer(headers: list[str]) -> Preferences:
    """Parse every Prefer header value; raise 400 PGRST122 on invalid ones under strict."""
    if not headers:
        return DEFAULT
    prefs = Preferences()
    given: list[str] = []
    invalid: list[str] = []
    seen: set[str] = set()
    for header in headers:
        for raw in header.split(","):
            item = raw.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            pref = PREFERENCES.get(key)
            if pref is None or not sep:
                invalid.append(item)
                continue
            if key in seen:  # PostgREST: the first valid value of a preference wins
                continue
            if pref.values is None:
                if key == "timezone":
                    seen.add(key)
                    given.append(f"{key}={value}")
                    continue
                # No sign; at most 64 bits (also keeps int() off texts past 4300 digits).
                number = int64(value) if value.isdigit() else None
                if number is None:
                    invalid.append(item)
                    continue
                setattr(prefs, _ATTRIBUTES.get(key, key), number)
            else:
                if value not in pref.values:
                    invalid.append(item)
                    continue
                setattr(prefs, _ATTRIBUTES.get(key, key), value)
            seen.add(key)
            given.append(f"{key}={value}")
    prefs.given = tuple(given)
    prefs.invalid = tuple(invalid)
    if invalid and prefs.handling == "strict":
        raise api_error("invalid_preference", details="Invalid preferences: " + ", ".join(invalid))
    return prefs


def preferences_markdown() -> str:
    lines = ["| preference | values | default | doc |", "|---|---|---|---|"]
    for p in PREFERENCES.values():
        values = " \\| ".join(p.values) if p.values else "N (integer)"
        lines.append(f"| `{p.key}` | {values} | {p.default or '—'} | {p.doc} |")
    return "\n".join(lines) + "\n"
