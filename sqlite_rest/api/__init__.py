"""The HTTP API of a table: the PostgREST query language and its SQL, the routes and writes.

| module | what |
|---|---|
| ``query.py`` | **where a request is parsed**: the PostgREST query grammar → AST |
| ``operators.py``, ``prefer.py`` | the declarative vocabulary tables (operators, Prefer keys) |
| ``sql.py`` | **where SQL is built**: AST → SQL with validated, quoted identifiers and bound values |
| ``schema.py`` | the schema cache |
| ``routes.py``, ``writes.py``, ``representation.py`` | the ``/<table>`` routes: reads, writes, output formats |
| ``openapi.py`` | the Swagger 2.0 description at ``/`` |
| ``embedding.py``, ``relationships_file.py`` | resource embedding; the foreign keys of views (``--relationships-file``) |
| ``functions.py``, ``rpc.py`` | the functions file (``--functions-file``) and the ``/rpc/<name>`` calls |
"""
