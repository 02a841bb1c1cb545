"""The durable job store: one SQLite database (WAL) holding jobs, API keys and per-user options.

Every change is one transaction, so a process killed at any moment leaves each job either before or after a
change. Images are never stored here, only their content hashes (``blobs``). The queue order is priority (the
owner's tier rank) first, then submission order (``seq``) within a priority.

A running job holds a lease: who runs it (the local worker, or a Ray actor on some node) and a token. Only the
holder of the current lease can record the job's end, so a worker that was given up for dead and then answers
after all cannot finish a job that has since been leased again: each job ends exactly once.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from img2img.jobs.request import JobRequest

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL_STATES: tuple[str, ...] = ("done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    outputs TEXT NOT NULL DEFAULT '[]',
    notes TEXT NOT NULL DEFAULT '[]',
    lease TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS options (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (owner, key)
);
"""


class QueueFull(Exception):
    """Too many queued jobs, for this owner (``scope="owner"``) or in all (``scope="total"``)."""

    def __init__(self, scope: str, limit: int) -> None:
        self.scope, self.limit = scope, limit
        super().__init__(f"the queue is full ({limit} queued jobs {'for this key' if scope == 'owner' else 'in all'})")


@dataclass
class Job:
    id: str
    owner: str
    priority: int
    state: JobState
    request: JobRequest
    created: float
    seq: int = 0
    started: float | None = None
    finished: float | None = None
    step: int = 0
    total: int = 0
    attempts: int = 0
    error: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lease: str | None = None  # while running: "<holder>#<token>", given by claim_next

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class JobStore:
    """Thread-safe access to the database at ``path`` (created on first use)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "lease" not in columns:  # a database from before leases
            self._db.execute("ALTER TABLE jobs ADD COLUMN lease TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Jobs -----------------------------------------------------------------------------------------------------

    def submit(self, owner: str, priority: int, request: JobRequest, *, max_per_owner: int,
               max_total: int) -> Job:
        """Queue a job, unless the owner or the whole queue is at its limit (``QueueFull``)."""
        job = Job(secrets.token_urlsafe(16), owner, priority, "queued", request, time.time())
        with self._transaction() as db:
            total = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if total >= max_total:
                raise QueueFull("total", max_total)
            mine = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND owner = ?", (owner,)).fetchone()
            if mine[0] >= max_per_owner:
                raise QueueFull("owner", max_per_owner)
            cursor = db.execute(
                "INSERT INTO jobs (id, owner, priority, state, request, created) VALUES (?, ?, ?, 'queued', ?, ?)",
                (job.id, owner, priority, json.dumps(request.to_dict()), job.created))
            job.seq = int(cursor.lastrowid or 0)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, owner: str, limit: int = 50, before: int | None = None) -> list[Job]:
        """The owner's jobs, newest first; ``before`` pages on by ``seq``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE owner = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (owner, before if before is not None else 2**62, limit)).fetchall()
        return [_job(row) for row in rows]

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 2 for the one after, ...; None when the job is not queued."""
        if job.state != "queued":
            return None
        with self._lock:
            ahead = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND (priority > ? OR (priority = ? AND seq < ?))",
                (job.priority, job.priority, job.seq)).fetchone()[0]
        return int(ahead) + 1

    def claim_next(self, holder: str = "worker") -> Job | None:
        """Mark the first queued job running (one more attempt), leased to ``holder``, and return it."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, seq LIMIT 1").fetchone()
            if row is None:
                return None
            started, lease = time.time(), f"{holder}#{secrets.token_hex(6)}"
            db.execute("UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, step = 0, lease = ? "
                       "WHERE id = ?", (started, lease, row["id"]))
        job = _job(row)
        job.state, job.started, job.attempts, job.step, job.lease = "running", started, job.attempts + 1, 0, lease
        return job

    def progress(self, job_id: str, step: int, total: int) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET step = ?, total = ? WHERE id = ? AND state = 'running'",
                             (step, total, job_id))

    def finish(self, job_id: str, state: JobState, *, outputs: list[dict[str, Any]] | None = None,
               error: str | None = None, notes: list[str] | None = None, lease: str | None = None) -> bool:
        """Record a job's end; with ``lease``, only while that lease is the job's current one (False otherwise)."""
        query = "UPDATE jobs SET state = ?, finished = ?, outputs = ?, error = ?, notes = ?, lease = NULL WHERE id = ?"
        values: tuple[Any, ...] = (state, time.time(), json.dumps(outputs or []), error, json.dumps(notes or []),
                                   job_id)
        if lease is not None:
            query, values = query + " AND lease = ? AND state = 'running'", (*values, lease)
        with self._lock:
            return self._db.execute(query, values).rowcount == 1

    def requeue(self, job_id: str, lease: str | None = None) -> None:
        """Put a running job back at its place in the queue without using up an attempt (a clean shutdown); with
        ``lease``, only while that lease is the job's current one."""
        with self._lock:
            self._db.execute("UPDATE jobs SET state = 'queued', step = 0, attempts = MAX(attempts - 1, 0), "
                             "lease = NULL WHERE id = ? AND state = 'running' AND (? IS NULL OR lease = ?)",
                             (job_id, lease, lease))

    def retry(self, job_id: str, lease: str | None = None) -> None:
        """Put a running job back at its place in the queue after its worker died; the attempt it used counts.
        With ``lease``, only while that lease is the job's current one."""
        with self._lock:
            self._db.execute("UPDATE jobs SET state = 'queued', step = 0, lease = NULL "
                             "WHERE id = ? AND state = 'running' AND (? IS NULL OR lease = ?)", (job_id, lease, lease))

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False when it is not queued (any more)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET state = 'cancelled', finished = ?, error = 'cancelled before it started' "
                "WHERE id = ? AND state = 'queued'", (time.time(), job_id))
        return cursor.rowcount == 1

    def recover(self, max_attempts: int) -> tuple[int, int]:
        """After a restart: jobs left running go back to the queue, or fail after ``max_attempts``.

        Returns (requeued, failed).
        """
        with self._transaction() as db:
            failed = db.execute(
                "UPDATE jobs SET state = 'failed', finished = ?, error = ?, lease = NULL "
                "WHERE state = 'running' AND attempts >= ?",
                (time.time(), f"the server stopped while this job ran, {max_attempts} times; not retried again",
                 max_attempts)).rowcount
            requeued = db.execute("UPDATE jobs SET state = 'queued', step = 0, lease = NULL "
                                  "WHERE state = 'running'").rowcount
        return requeued, failed

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {row[0]: row[1] for row in rows}

    def recent_seconds(self, limit: int = 20) -> list[float]:
        """How long the last finished jobs ran, newest first (for time estimates)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT finished - started FROM jobs WHERE state = 'done' ORDER BY finished DESC LIMIT ?",
                (limit,)).fetchall()
        return [float(row[0]) for row in rows]

    def running(self, owner: str | None = None) -> Job | None:
        query, args = "SELECT * FROM jobs WHERE state = 'running'", ()
        if owner is not None:
            query, args = query + " AND owner = ?", (owner,)
        with self._lock:
            row = self._db.execute(query + " ORDER BY started DESC LIMIT 1", args).fetchone()
        return _job(row) if row else None

    def queued_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY priority DESC, seq").fetchall()
        return [row[0] for row in rows]

    # API keys and options ---------------------------------------------------------------------------------------

    def add_key(self, key_hash: str, name: str, tier: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO api_keys (hash, name, tier, created) VALUES (?, ?, ?, ?)",
                       (key_hash, name, tier, time.time()))

    def remove_key(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM api_keys WHERE name = ?", (name,)).rowcount == 1

    def api_keys(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT name, tier, created FROM api_keys ORDER BY name").fetchall()
        return [dict(row) for row in rows]

    def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT name, tier FROM api_keys WHERE hash = ?", (key_hash,)).fetchone()
        return dict(row) if row else None

    def has_keys(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def options(self, owner: str) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM options WHERE owner = ?", (owner,)).fetchall()
        return {row[0]: json.loads(row[1]) for row in rows}

    def set_option(self, owner: str, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT INTO options (owner, key, value) VALUES (?, ?, ?) "
                             "ON CONFLICT (owner, key) DO UPDATE SET value = excluded.value",
                             (owner, key, json.dumps(value)))


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], owner=row["owner"], priority=row["priority"], state=row["state"],
        request=JobRequest.from_dict(json.loads(row["request"])), created=row["created"], seq=row["seq"],
        started=row["started"], finished=row["finished"], step=row["step"], total=row["total"],
        attempts=row["attempts"], error=row["error"], outputs=json.loads(row["outputs"]),
        notes=json.loads(row["notes"]), lease=row["lease"],
    )
