"""The query-string grammar: valid inputs -> AST, invalid inputs -> QueryError."""
import pytest

from sqlite_rest.api.operators import OPERATORS, operators_markdown
from sqlite_rest.api.query import (STAR, And, ColumnRef, Filter, JsonStep, Not, Or, OrderTerm,
                               QueryError, ReadQuery, SelectItem, parse_columns, parse_filter,
                               parse_logic, parse_on_conflict, parse_order, parse_read_query,
                               parse_select)

C = ColumnRef


def F(col, op, value, negated=False, quantifier=None):
    column = col if isinstance(col, ColumnRef) else C(col)
    return Filter(column, op, value, negated, quantifier)


# --------------------------------------------------------------------------
# filters: key, value -> Filter

FILTERS = [
    ("id", "eq.5", F("id", "eq", "5")),
    ("id", "neq.5", F("id", "neq", "5")),
    ("id", "gt.5", F("id", "gt", "5")),
    ("id", "gte.5", F("id", "gte", "5")),
    ("id", "ge.5", F("id", "gte", "5")),          # Go server alias
    ("id", "lt.5", F("id", "lt", "5")),
    ("id", "lte.5", F("id", "lte", "5")),
    ("id", "le.5", F("id", "lte", "5")),          # Go server alias
    ("id", "not.eq.5", F("id", "eq", "5", negated=True)),
    ("name", "eq.", F("name", "eq", "")),         # empty string is a value
    ("name", "eq.a.b.c", F("name", "eq", "a.b.c")),  # dots after the op belong to the value
    ("name", "eq.a,b", F("name", "eq", "a,b")),   # top level: no list syntax
    ("name", 'eq."q"', F("name", "eq", '"q"')),   # top level: quotes are literal
    ("name", "eq.(x)", F("name", "eq", "(x)")),
    ("name", "like.*an*", F("name", "like", "*an*")),
    ("name", "ilike.%AN%", F("name", "ilike", "%AN%")),
    ("name", "match.^a.*z$", F("name", "match", "^a.*z$")),
    ("name", "imatch.^A", F("name", "imatch", "^A")),
    ("name", "isdistinct.x", F("name", "isdistinct", "x")),
    ("name", "not.isdistinct.x", F("name", "isdistinct", "x", negated=True)),
    ("id", "in.(1,2,3)", F("id", "in", ("1", "2", "3"))),
    ("id", "in.()", F("id", "in", ())),
    ("id", "not.in.(1)", F("id", "in", ("1",), negated=True)),
    ("name", 'in.(1,"a,b")', F("name", "in", ("1", "a,b"))),
    ("name", 'in.("a.b:c(d)")', F("name", "in", ("a.b:c(d)",))),
    ("name", r'in.("say \"hi\"","back\\slash")', F("name", "in", ('say "hi"', "back\\slash"))),
    ("name", "in.(,)", F("name", "in", ("", ""))),
    ("name", "in.( a , b)", F("name", "in", (" a ", " b"))),
    ("x", "is.null", F("x", "is", "null")),
    ("x", "is.NULL", F("x", "is", "null")),
    ("x", "is.not_null", F("x", "is", "not_null")),
    ("x", "is.true", F("x", "is", "true")),
    ("x", "is.false", F("x", "is", "false")),
    ("x", "is.unknown", F("x", "is", "unknown")),
    ("x", "not.is.null", F("x", "is", "null", negated=True)),
    ("name", "like(any).{a*,b*}", F("name", "like", ("a*", "b*"), quantifier="any")),
    ("name", "ilike(all).{%a%,%b%}", F("name", "ilike", ("%a%", "%b%"), quantifier="all")),
    ("name", 'eq(any).{"a,b",c}', F("name", "eq", ("a,b", "c"), quantifier="any")),
    ("name", "not.like(any).{a*}", F("name", "like", ("a*",), negated=True, quantifier="any")),
    ("id", "gt(any).{}", F("id", "gt", (), quantifier="any")),
    ("data->a", "eq.1", F(C("data", (JsonStep("a", False),)), "eq", "1")),
    ("data->>a", "eq.1", F(C("data", (JsonStep("a", True),)), "eq", "1")),
    ("data->a->>b", "eq.x",
     F(C("data", (JsonStep("a", False), JsonStep("b", True))), "eq", "x")),
    ("data->0->>-1", "eq.x",
     F(C("data", (JsonStep(0, False), JsonStep(-1, True))), "eq", "x")),
    ('data->"a.b"', "eq.x", F(C("data", (JsonStep("a.b", False),)), "eq", "x")),
    ('"odd col"', "eq.x", F("odd col", "eq", "x")),
    ("über", "eq.ß", F("über", "eq", "ß")),
    ("my-col", "eq.1", F("my-col", "eq", "1")),
    ("id;drop table x", "eq.1", F("id;drop table x", "eq", "1")),  # rejected by the schema
]


@pytest.mark.parametrize("key,value,expected", FILTERS, ids=[f"{k}={v}" for k, v, _ in FILTERS])
def test_parse_filter(key, value, expected):
    assert parse_filter(key, value) == expected


BAD_FILTERS = [
    ("id", "5", "unknown operator"),
    ("id", "", "expected an operator"),
    ("id", "eq", "expected '.'"),
    ("id", "equals.5", "unknown operator 'equals'"),
    ("id", "not.5", "unknown operator '5'"),
    ("id", "not.not.eq.5", "unknown operator 'not'"),
    ("id", "in.1,2", "expected '('"),
    ("id", "in.(1,2", "expected ',' or ')'"),
    ("id", "in.(1,2)x", "unexpected text"),
    ("id", 'in.("a"b)', "expected ',' or ')'"),
    ("x", "is.maybe", "is takes one of"),
    ("x", "is.", "is takes one of"),
    ("name", "like(some).{a}", "expected (any) or (all)"),
    ("name", "like(any.{a}", "expected ')'"),
    ("name", "like(any).a*", "expected '{'"),
    ("x", "is(any).{null}", "does not take"),
    ("x", "in(any).{1}", "does not take"),
    ("data->", "eq.1", "expected a JSON key"),
    ("a.b", "eq.1", "unexpected text after the column"),
    ("a(b)", "eq.1", "unexpected text after the column"),
    ('"', "eq.1", "unterminated"),
    ('""', "eq.1", "empty"),
    ("", "eq.1", "expected a column name"),
    ("data->9223372036854775808", "eq.1", "out of range"),
]


@pytest.mark.parametrize("key,value,message", BAD_FILTERS,
                         ids=[f"{k}={v}" for k, v, _ in BAD_FILTERS])
def test_parse_filter_errors(key, value, message):
    with pytest.raises(QueryError) as info:
        parse_filter(key, value)
    error = info.value
    assert message in error.message
    assert error.code == "PGRST100" and error.status == 400
    assert error.details  # says where
    assert error.to_dict().keys() == {"code", "message", "details", "hint"}


# --------------------------------------------------------------------------
# logic trees

LOGIC = [
    ("or", "(a.eq.1,b.gt.2)", Or((F("a", "eq", "1"), F("b", "gt", "2")))),
    ("and", "(a.eq.1,b.gt.2)", And((F("a", "eq", "1"), F("b", "gt", "2")))),
    ("not.or", "(a.eq.1,b.gt.2)", Not(Or((F("a", "eq", "1"), F("b", "gt", "2"))))),
    ("not.and", "(a.eq.1)", Not(And((F("a", "eq", "1"),)))),
    ("or", "(a.eq.1,and(b.gte.1,b.lte.2))",
     Or((F("a", "eq", "1"), And((F("b", "gte", "1"), F("b", "lte", "2")))))),
    ("or", "(a.eq.1,not.and(b.gte.1,or(c.is.null,d.not.eq.x)))",
     Or((F("a", "eq", "1"),
         Not(And((F("b", "gte", "1"),
                  Or((F("c", "is", "null"), F("d", "eq", "x", negated=True))))))))),
    ("or", '(name.eq."a,b)",name.eq.plain)',
     Or((F("name", "eq", "a,b)"), F("name", "eq", "plain")))),
    ("or", r'(name.eq."say \"hi\"")', Or((F("name", "eq", 'say "hi"'),))),
    ("or", "(id.in.(1,2),id.not.in.(3))",
     Or((F("id", "in", ("1", "2")), F("id", "in", ("3",), negated=True)))),
    ("or", "(name.like(any).{a*,b*},name.eq.)",
     Or((F("name", "like", ("a*", "b*"), quantifier="any"), F("name", "eq", "")))),
    ("or", "(data->a->>b.eq.1,n.ge.2)",
     Or((F(C("data", (JsonStep("a", False), JsonStep("b", True))), "eq", "1"),
         F("n", "gte", "2")))),
    ("or", "(and.eq.1,or.eq.2,not.eq.3)",  # columns named like keywords
     Or((F("and", "eq", "1"), F("or", "eq", "2"), F("not", "eq", "3")))),
    ("or", "( a.eq.1, b.eq.2)", Or((F("a", "eq", "1"), F("b", "eq", "2")))),
    ("or", "(a.eq.1.5)", Or((F("a", "eq", "1.5"),))),
    ("and", "(x.is.NULL)", And((F("x", "is", "null"),))),
]


@pytest.mark.parametrize("key,value,expected", LOGIC, ids=[f"{k}={v}" for k, v, _ in LOGIC])
def test_parse_logic(key, value, expected):
    assert parse_logic(key, value) == expected


def test_deep_nesting():
    depth = 40
    value = "(" + "or(" * depth + "a.eq.1" + ")" * depth + ")"
    node = parse_logic("and", value)
    for _ in range(depth + 1):
        node = node.items[0]
    assert node == F("a", "eq", "1")


BAD_LOGIC = [
    ("or", "a.eq.1", "expected '(' to open"),
    ("or", "()", "expected a column name"),
    ("or", "(a.eq.1", "expected ',' or ')'"),
    ("or", "(a.eq.1))", "unexpected text after"),
    ("or", "(a.eq.1,)", "expected a column name"),
    ("or", "(a.zz.1)", "unknown operator 'zz'"),
    ("or", "(a)", "expected '.' after the column"),
    ("or", "(a.eq)", "expected '.'"),
    ("or", "(a.in.(1,2)", "expected ',' or ')'"),
    ("or", '(a.eq."x)', "unterminated double quote"),
    ("or", '(a.eq."x"y)', "expected ',' or ')'"),
    ("or", "(and(a.eq.1)", "expected ',' or ')'"),
    ("or", "(a.is.maybe)", "is takes one of"),
    ("or", "(" + "or(" * 70 + "a.eq.1" + ")" * 71, "nested too deeply"),
]


@pytest.mark.parametrize("key,value,message", BAD_LOGIC,
                         ids=[f"{k}={v[:40]}" for k, v, _ in BAD_LOGIC])
def test_parse_logic_errors(key, value, message):
    with pytest.raises(QueryError) as info:
        parse_logic(key, value)
    assert message in info.value.message


# --------------------------------------------------------------------------
# select

S = SelectItem
SELECTS = [
    ("*", (STAR,)),
    ("", (STAR,)),
    ("id", (S(C("id")),)),
    ("id,name", (S(C("id")), S(C("name")))),
    ("id, name", (S(C("id")), S(C("name")))),
    ("*,id", (STAR, S(C("id")))),
    ("ident:id", (S(C("id"), alias="ident"),)),
    ("id::text", (S(C("id"), cast="text"),)),
    ("id::TEXT", (S(C("id"), cast="text"),)),
    ("n::double precision", (S(C("n"), cast="double precision"),)),
    ("x:id::bigint", (S(C("id"), alias="x", cast="bigint"),)),
    ("data->a->>b", (S(C("data", (JsonStep("a", False), JsonStep("b", True)))),)),
    ("v:data->>b::int", (S(C("data", (JsonStep("b", True),)), alias="v", cast="int"),)),
    ('"odd, col"', (S(C("odd, col")),)),
    ('"a:b":id', (S(C("id"), alias="a:b"),)),
]


@pytest.mark.parametrize("value,expected", SELECTS, ids=[v or "empty" for v, _ in SELECTS])
def test_parse_select(value, expected):
    assert parse_select(value) == expected


def test_select_output_names():
    items = parse_select("a:id,data->x->>y,data->0,name")
    assert [i.output_name for i in items] == ["a", "y", "data", "name"]
    # PostgREST names a path that ends in an array index after its last key
    assert parse_select("data->tags->0,data->a->1->>2")[0].output_name == "tags"
    assert parse_select("data->a->1->>2")[0].output_name == "a"


@pytest.mark.parametrize("value,items", [
    ('in.(")', ('"',)),                                   # a quote never closed is a character
    ('in.(Double"Quote"McGraw")', ('Double"Quote"McGraw"',)),
    ('in.("a)', ('"a',)),
    ('in.("a,b",")', ("a,b", '"')),
])
def test_in_list_quoting_corners_read_as_postgrest(value, items):
    assert parse_filter("name", value).value == items


def test_unknown_cast_is_42704():
    from sqlite_rest.api.query import UnknownCastError
    with pytest.raises(UnknownCastError) as info:
        parse_select("id::regclass")
    assert info.value.code == "42704" and info.value.status == 400
    assert info.value.message == 'type "regclass" does not exist'


def test_negative_limit_is_416_and_negative_offset_a_no_op():
    from sqlite_rest.api.query import RangeError
    with pytest.raises(RangeError) as info:
        parse_read_query([("limit", "-1")])
    assert (info.value.status, info.value.code) == (416, "PGRST103")
    assert info.value.details == "Limit should be greater than or equal to zero."
    assert parse_read_query([("offset", "-4")]).offset == 0


def test_malformed_json_paths_are_refused():
    for bad in ("data->>--34", "data->-x", "data->>-"):
        with pytest.raises(QueryError, match="JSON key or an array index"):
            parse_select(bad)
    assert parse_select("data->>-1")[0].column.json_path[0].key == -1


BAD_SELECTS = [
    ("(select * from secret)", "expected a column name"),
    ("id,(select 1)", "expected a column name"),
    ("author(name", "expected ')' closing the embedded resource"),
    ("author!(name)", "expected a foreign key"),
    ("...author", "expected '(' and the embedded resource's columns"),
    ("author!a!b(name)", "two hints"),
    ("a:...author(name)", "a spread embedding takes no alias"),
    ("id.sum", "expected an aggregate"),
    ("id.median()", "expected an aggregate"),
    ("count()x", "expected ',' between selected columns"),
    ("id::text;drop table t", "expected ','"),
    ("id::", "expected a type after '::'"),
    ("id,,name", "expected a column name"),
    ("id,", "expected a column name"),
    ("data->a:x", "alias must be a plain name"),
    ("id name", None),  # a name with a space parses; the schema rejects it
]


@pytest.mark.parametrize("value,message", BAD_SELECTS, ids=[v for v, _ in BAD_SELECTS])
def test_parse_select_errors(value, message):
    if message is None:
        assert parse_select(value) == (S(C(value)),)
        return
    with pytest.raises(QueryError) as info:
        parse_select(value)
    assert message in info.value.message


# --------------------------------------------------------------------------
# order

O = OrderTerm  # noqa: E741 - short names keep the table of cases readable
ORDERS = [
    ("id", (O(C("id")),)),
    ("id.asc", (O(C("id")),)),
    ("id.desc", (O(C("id"), descending=True),)),
    ("id.nullsfirst", (O(C("id"), nulls_first=True),)),
    ("id.desc.nullslast", (O(C("id"), descending=True, nulls_first=False),)),
    ("a.desc.nullslast,b", (O(C("a"), True, False), O(C("b")))),
    ("a, b.desc", (O(C("a")), O(C("b"), True))),
    ("data->>k.desc", (O(C("data", (JsonStep("k", True),)), True),)),
]


@pytest.mark.parametrize("value,expected", ORDERS, ids=[v for v, _ in ORDERS])
def test_parse_order(value, expected):
    assert parse_order(value) == expected


BAD_ORDERS = [
    ("id.up", "expected asc, desc"),
    ("id.desc.asc", "expected nullsfirst or nullslast"),
    ("id.desc.nullslast.x", "expected ',' between"),
    ("id,", "expected a column name"),
    ("(select 1)", "expected a column name"),
    ("id;drop", None),
]


@pytest.mark.parametrize("value,message", BAD_ORDERS, ids=[v for v, _ in BAD_ORDERS])
def test_parse_order_errors(value, message):
    if message is None:  # parses as a (nonexistent) column name; the schema rejects it
        assert parse_order(value) == (O(C(value)),)
        return
    with pytest.raises(QueryError) as info:
        parse_order(value)
    assert message in info.value.message


# --------------------------------------------------------------------------
# columns / on_conflict


def test_parse_columns():
    assert parse_columns("a,b") == ("a", "b")
    assert parse_columns('"a","b c"') == ("a", "b c")  # postgrest-js quotes them
    assert parse_columns(" a , b ") == ("a", "b")
    assert parse_on_conflict("email") == ("email",)
    for bad in ("", "a,", "a,,b", "a(b)"):
        with pytest.raises(QueryError):
            parse_columns(bad)


# --------------------------------------------------------------------------
# whole query strings


def test_parse_read_query_everything():
    q = parse_read_query([
        ("select", "id,name"), ("id", "gt.1"), ("or", "(a.eq.1,b.eq.2)"),
        ("name", "not.is.null"), ("order", "id.desc"), ("limit", "10"), ("offset", "20"),
        ("on_conflict", "id"), ("columns", "id,name"),
    ])
    assert q == ReadQuery(
        select=(S(C("id")), S(C("name"))),
        filters=And((F("id", "gt", "1"), Or((F("a", "eq", "1"), F("b", "eq", "2"))),
                     F("name", "is", "null", negated=True))),
        order=(O(C("id"), True),), limit=10, offset=20,
        on_conflict=("id",), columns=("id", "name"))


def test_parse_read_query_defaults_and_repeats():
    assert parse_read_query([]) == ReadQuery()
    q = parse_read_query([("id", "gt.1"), ("id", "lt.5"), ("not.or", "(a.eq.1)"),
                          ("limit", "1"), ("limit", "2")])
    assert q.filters == And((F("id", "gt", "1"), F("id", "lt", "5"),
                             Not(Or((F("a", "eq", "1"),)))))
    assert q.limit == 2
    assert q.select == (STAR,)


@pytest.mark.parametrize("args,message", [
    ([("limit", "ten")], "limit"),
    ([("offset", "1.5")], "offset"),
    ([("limit", "")], "limit"),
    ([("limit", "9223372036854775808")], "limit"),
    ([("offset", "99999999999999999999999")], "offset"),
    ([("order", "id.sideways")], "order"),
    ([("select", "a(")], "select"),
    ([("id", "eq")], "filter"),
    ([("or", "a.eq.1")], "logic"),
])
def test_parse_read_query_errors(args, message):
    with pytest.raises(QueryError) as info:
        parse_read_query(args)
    assert message in info.value.message


def test_parsed_queries_are_cached_and_hashable():
    a = parse_read_query([("id", "eq.5")])
    b = parse_read_query([("id", "eq.5")])
    assert a is b
    assert hash(a) == hash(b)


def test_every_operator_parses():
    for op in OPERATORS:
        for name in (op.name, *op.aliases):
            value = {"in": "(1)", "is": "null", "cs": "{1}", "cd": "{1}", "ov": "{1}"}.get(
                op.name, "1")
            assert parse_filter("c", f"{name}.{value}").op == op.name


def test_operators_markdown_lists_every_operator():
    md = operators_markdown()
    for op in OPERATORS:
        assert f"| `{op.name}` |" in md
    assert "`ge`" in md and "`le`" in md


def test_error_messages_are_bounded():
    with pytest.raises(QueryError) as info:
        parse_filter("id", "zz" + "x" * 10000)
    assert len(info.value.message) < 400 and len(info.value.details) < 400


def test_whitespace_inside_logic_trees_is_accepted():
    assert parse_logic("or", "( id.eq.1 , and( a.gt.2 ,b.lt.3 ) )") == \
        parse_logic("or", "(id.eq.1,and(a.gt.2,b.lt.3))")
    # PostgREST's AndOrParamsSpec "allows whitespace"
    spaced = parse_logic("and", "( and ( id.in.( 1, 2, 3 ) , id.eq.3 ) , or ( id.eq.2 , id.eq.3 ) )")
    assert spaced == parse_logic("and", "(and(id.in.(1,2,3),id.eq.3),or(id.eq.2,id.eq.3))")
