"""Full-text search: PostgREST's fts, plfts, phfts and wfts as SQLite FTS5 queries.

PostgreSQL parses the search text with to_tsquery (fts), plainto_tsquery (plfts),
phraseto_tsquery (phfts) or websearch_to_tsquery (wfts); each becomes here an FTS5 query
string with the same meaning, built from quoted terms (so no search text is ever read as FTS5
syntax of its own). The index is FTS5's: a column of an FTS5 table is searched directly, and
a table ``t`` is searched through the FTS5 table ``t_fts`` that indexes it by rowid (see
design/query-and-sql.md, "Full-text search").
"""
from __future__ import annotations

import re

from .query import QueryError

_WORD = re.compile(r"\w+", re.UNICODE)


def fts5_query(op: str, text: str) -> str:
    """The FTS5 query for one of PostgREST's full-text operators and its search text."""
    if op == "plfts":
        return _join(" AND ", [_term(w) for w in _words(text)], text)
    if op == "phfts":
        return _phrase(_words(text), text)
    if op == "wfts":
        return _websearch(text)
    return _tsquery(text)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _term(word: str, prefix: bool = False) -> str:
    return '"' + word.replace('"', '""') + '"' + ("*" if prefix else "")


def _phrase(words: list[str], text: str) -> str:
    if not words:
        raise _nothing(text)
    return '"' + " ".join(w.replace('"', '""') for w in words) + '"'


def _join(sep: str, terms: list[str], text: str) -> str:
    if not terms:
        raise _nothing(text)
    return sep.join(terms)


def _nothing(text: str) -> QueryError:
    return QueryError("the full-text search has no words to search for",
                      details=f"search text {text[:80]!r}", hint="search for at least one word")


_WEB_TOKEN = re.compile(r'"([^"]*)"?|(-?)([^\s"]+)')


def _websearch(text: str) -> str:
    """websearch_to_tsquery: "quoted phrases", `or` between alternatives, -word excludes;
    everything else must all match."""
    groups: list[list[str]] = [[]]   # OR of ANDs
    excluded: list[str] = []
    for m in _WEB_TOKEN.finditer(text):
        phrase, minus, word = m.groups()
        if phrase is not None:
            words = _words(phrase)
            if words:
                groups[-1].append(_phrase(words, phrase))
        elif word.lower() == "or" and not minus:
            if groups[-1]:
                groups.append([])
        else:
            words = _words(word)
            if not words:
                continue
            term = _phrase(words, word) if len(words) > 1 else _term(words[0])
            (excluded if minus else groups[-1]).append(term)
    alternatives = ["(" + " AND ".join(g) + ")" for g in groups if g]
    if not alternatives:
        raise _nothing(text)
    query = " OR ".join(alternatives)
    if excluded:  # FTS5's NOT is binary: what matches, minus what any excluded term matches
        query = "(" + query + ") NOT (" + " OR ".join(excluded) + ")"
    return query


_SIMPLE_PHRASE = re.compile(r'"(?:[^"]|"")*"\Z')  # one quoted term or phrase, no prefix *
_TS_TOKEN = re.compile(r"\s*(?:(<->|<\d+>)|([&|!()])|([^\s&|!()<>:]+)(:\*)?)")


def _tsquery(text: str) -> str:
    """to_tsquery: words joined by & (and), | (or), ! (not), <-> (followed by), with
    parentheses and word:* prefixes. `a & !b` becomes FTS5's `a NOT b`."""
    tokens = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TS_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError("malformed full-text query", details=f"at position {pos + 1} of "
                             f"{text[:80]!r}",
                             hint="fts takes to_tsquery syntax: a & b, a | b, !a, a <-> b, a:*; "
                                  "plfts, phfts and wfts take plain text")
        follow, op, word, prefix = m.groups()
        if follow:
            tokens.append(("follow", None))
        elif op:
            tokens.append((op, None))
        else:
            words = _words(word)
            if words:
                tokens.append(("term", _phrase(words, word) if len(words) > 1
                               else _term(words[0], bool(prefix))))
        pos = m.end()
    return _TsParser(tokens, text).parse()


class _TsParser:
    """or := and ('|' and)* ; and := unary (('&' | '<->') unary)* ; unary := '!' unary | atom."""

    def __init__(self, tokens, text):
        self.tokens, self.i, self.text = tokens, 0, text

    def parse(self) -> str:
        if not self.tokens:
            raise _nothing(self.text)
        query, negated = self._or()
        if self.i != len(self.tokens):
            raise self._error()
        if negated:
            raise QueryError("a full-text query cannot be only a negation",
                             details=f"in {self.text[:80]!r}", hint="write a & !b, not !b")
        return query

    def _peek(self):
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def _error(self) -> QueryError:
        return QueryError("malformed full-text query", details=f"in {self.text[:80]!r}",
                          hint="fts takes to_tsquery syntax: a & b, a | b, !a, a <-> b, a:*")

    def _or(self):
        parts = [self._and()]
        while self._peek() == "|":
            self.i += 1
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        if any(neg for _, neg in parts):
            raise QueryError("a negation cannot be an alternative of an OR in full-text search",
                             details=f"in {self.text[:80]!r}")
        return "(" + " OR ".join(q for q, _ in parts) + ")", False

    def _and(self):
        query, negated = self._unary()
        if negated:
            raise QueryError("a full-text query cannot start with a negation",
                             details=f"in {self.text[:80]!r}", hint="write a & !b, not !b & a")
        while self._peek() in ("&", "follow"):
            kind = self._peek()
            self.i += 1
            right, neg = self._unary()
            if neg:
                if kind != "&":
                    raise self._error()
                query = "(" + query + " NOT " + right + ")"
            elif kind == "follow":
                # a <-> b: b right after a, an FTS5 phrase; between groups FTS5 has no
                # "followed by", so both must match (looser than PostgreSQL: documented)
                if _SIMPLE_PHRASE.match(query) and _SIMPLE_PHRASE.match(right):
                    query = query[:-1] + " " + right[1:]
                else:
                    query = "(" + query + " AND " + right + ")"
            else:
                query = "(" + query + " AND " + right + ")"
        return query, False

    def _unary(self):
        kind = self._peek()
        if kind == "!":
            self.i += 1
            query, negated = self._unary()
            return query, not negated
        if kind == "(":
            self.i += 1
            query = self._or()
            if self._peek() != ")":
                raise self._error()
            self.i += 1
            return query
        if kind == "term":
            query = self.tokens[self.i][1]
            self.i += 1
            return query, False
        raise self._error()
