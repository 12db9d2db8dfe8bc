"""sqlite-rest: a PostgREST-compatible REST API over any SQLite database."""
__version__ = "0.1.0"
