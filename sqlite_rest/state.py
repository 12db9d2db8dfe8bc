"""Per-app state: ``app.extensions["sqlite_rest"]`` holds an `AppState`, so several apps (one
per test) can live in one process. A leaf module: views read it without importing the factory."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from flask import Flask

from .auth import authenticator as auth_module
from .config import ServerConfig
from .db import Database
from .api.schema import SchemaCache

EXTENSION = "sqlite_rest"


@dataclass
class AppState:
    config: ServerConfig
    db: Database
    schema_cache: SchemaCache
    authenticator: auth_module.Authenticator
    #: --security-allow-table as a set (deny by default).
    allowed_tables: frozenset
    #: Set once SQLite reported CORRUPT/NOTADB: /ready answers 503 from then on.
    database_corrupt: bool = False
    #: The functions of --functions-file (api/functions.py: FunctionCatalog), served under
    #: /rpc/; None without a functions file.
    functions: Optional[object] = None
    #: The roles of --permissions-file (auth/policy.py: Policy); None without one.
    policy: Optional[object] = None
    extra: dict = field(default_factory=dict)

    @property
    def replica(self) -> bool:
        """A read replica (--db-dsn with vfs=litestream): reads name their position."""
        return self.config.dsn.replica


def state_of(app: Flask) -> AppState:
    return app.extensions[EXTENSION]
