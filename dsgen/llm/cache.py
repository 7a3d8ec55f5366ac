"""Response cache: SQLite in WAL mode, safe under concurrent writers and crashes.

Only answers that parsed are stored, keyed by `ChatRequest.cache_key()`, so a re-run
never pays for a finished call twice.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .types import ChatRequest, ChatResponse


class ResponseCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses ("
            " key TEXT PRIMARY KEY, request TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS failures ("
            " key TEXT PRIMARY KEY, reason TEXT NOT NULL, detail TEXT NOT NULL, attempts INTEGER NOT NULL,"
            " created REAL NOT NULL)"
        )

    def get(self, key: str) -> ChatResponse | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return ChatResponse.model_validate_json(row[0]) if row else None

    def put(self, key: str, request: ChatRequest, response: ChatResponse) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO responses (key, request, response, created) VALUES (?, ?, ?, ?)",
            (key, request.model_dump_json(), response.model_dump_json(), time.time()),
        )

    def get_failure(self, key: str) -> tuple[str, str, int] | None:
        """(reason, detail, attempts) of a call that failed on an earlier invocation."""
        return self._db.execute("SELECT reason, detail, attempts FROM failures WHERE key = ?", (key,)).fetchone()

    def put_failure(self, key: str, reason: str, detail: str, attempts: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO failures (key, reason, detail, attempts, created) VALUES (?, ?, ?, ?, ?)",
            (key, reason, detail, attempts, time.time()),
        )

    def count_missing(self, keys: list[str], include_failures: bool = True) -> int:
        """How many of `keys` have neither an answer nor (when counted) a recorded failure."""
        keys = sorted(set(keys))
        tables = ["responses"] + (["failures"] if include_failures else [])
        found = 0
        for i in range(0, len(keys), 400):  # 2 tables x 400 < 999, the variable limit of older SQLite
            chunk = keys[i : i + 400]
            marks = ",".join("?" * len(chunk))
            union = " UNION ".join(f"SELECT key FROM {t} WHERE key IN ({marks})" for t in tables)
            found += self._db.execute(f"SELECT COUNT(*) FROM ({union})", chunk * len(tables)).fetchone()[0]
        return len(keys) - found

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
