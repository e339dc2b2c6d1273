"""The results store: every run, cell, seed and verdict in one SQLite file.

Python's sqlite3 only, no ORM. WAL journal, so readers never block the writer and several
pytest processes (xdist workers) can write at once, each waiting its turn for a short lock.
Each seed's result is committed the moment it finishes: Ctrl-C or a crash loses no finished
seed. Nothing read back executes code: rows hold JSON text and numbers, never pickles.

Schema versions live in ``PRAGMA user_version`` and move forward through :data:`MIGRATIONS`;
the file is marked as hpspec's with ``PRAGMA application_id``. A file that is not a database,
or is someone else's, is moved aside (never overwritten) and a fresh store is made, but only
when the file starts with SQLite's header: a directory, or a file that is not SQLite at all, is
never moved (:func:`check_store_path` says what is wrong with it, and :meth:`Store.open` raises
:class:`StorePathError`): hpspec moves only what it can tell is a damaged or foreign store.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from hpspec.results import SeedResult

__all__ = ["SCHEMA_VERSION", "RunRow", "Store", "StoreDamaged", "StoreMoved", "StorePathError",
           "cache_key", "check_store_path", "fingerprint"]

APPLICATION_ID = 0x68707370  # "hpsp"
SCHEMA_VERSION = 1

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started REAL NOT NULL,
            finished REAL,
            name TEXT,
            status TEXT NOT NULL DEFAULT 'running',
            fingerprint TEXT NOT NULL,
            environment TEXT NOT NULL,
            args TEXT NOT NULL DEFAULT '[]'
        )""",
        """CREATE TABLE seeds (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            cache_key TEXT NOT NULL,
            experiment TEXT NOT NULL,
            cell_id TEXT NOT NULL,
            params TEXT NOT NULL,
            seed INTEGER NOT NULL,
            device TEXT NOT NULL,
            result TEXT NOT NULL,
            cached INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL
        )""",
        "CREATE INDEX seeds_by_key ON seeds(cache_key, created)",
        "CREATE INDEX seeds_by_run ON seeds(run_id, experiment, cell_id)",
        """CREATE TABLE cells (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            experiment TEXT NOT NULL,
            cell_id TEXT NOT NULL,
            params TEXT NOT NULL,
            outcome TEXT NOT NULL,
            PRIMARY KEY (run_id, experiment, cell_id)
        )""",
        """CREATE TABLE verdicts (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            experiment TEXT NOT NULL,
            cell_id TEXT,
            claim TEXT NOT NULL,
            outcome TEXT NOT NULL,
            p_pass REAL,
            p_fail REAL,
            message TEXT NOT NULL
        )""",
    ],
}


class StoreMoved(Warning):
    """The store file was unreadable or foreign; it was moved aside and a fresh one made."""


class StorePathError(OSError):
    """The store path cannot hold a store (a directory, a file that is not SQLite, a path
    that cannot be written); nothing was moved or changed."""


SQLITE_HEADER = b"SQLite format 3\x00"


def _sqlite_shaped(path: Path) -> bool:
    """Whether ``path`` is a file that SQLite made: empty (SQLite's own empty database) or
    starting with its 16-byte header. Only such a file may ever be moved aside."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError:
        return False
    return head == b"" or head == SQLITE_HEADER


def check_store_path(path: str | os.PathLike[str]) -> str | None:
    """What makes ``path`` unusable as a store, in words, or None when it is usable.

    Pure look: nothing is created, moved or written. Usable means: a SQLite-shaped file
    (damaged or foreign ones are moved aside later, with a warning), or a path that does not
    exist yet whose nearest existing ancestor is a writable directory."""
    path = Path(path)
    if path.is_dir():
        return (f"{path} is a directory; the store is one SQLite file "
                f"(e.g. {path / 'results.sqlite'})")
    if path.exists():
        if not path.is_file():
            return f"{path} is not a regular file"
        if not _sqlite_shaped(path):
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            return (f"{path} is a file of {size} bytes that is not a SQLite database "
                    "(hpspec never moves or overwrites it); name another path")
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} cannot be read and written by this user"
        return None
    parent = path.parent
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so {path} cannot be made under it"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable, so {path} cannot be made"
    return None
class StoreDamaged(ValueError):
    """A store, or one of its rows, that cannot be read; the message names the file and row."""


def _loads(text: Any, path: Path, what: str) -> Any:
    """One JSON cell of the store; a damaged one names the file and the row, not json's insides."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as e:
        raise StoreDamaged(f"{path}: {what} is not valid JSON ({e})") from None


def fingerprint(env: Mapping[str, Any]) -> str:
    """What must match for timings to be comparable: versions, device and CPU."""
    keys = ("hpspec", "torch", "python", "device", "device_name", "cuda", "cpu_count",
            "machine")
    blob = json.dumps({k: env.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_key(parts: Mapping[str, Any]) -> str:
    """A stable key over JSON-able parts (source, hyperparameters, seed, data, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


@attrs.frozen
class RunRow:
    id: int
    started: float
    finished: float | None
    name: str | None
    status: str
    fingerprint: str
    environment: dict[str, Any]
    seeds: int
    cached: int


class Store:
    """One SQLite store; open it with :meth:`open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, moved: Path | None = None) -> None:
        self.path = path
        self.conn = conn
        #: Where an unreadable or foreign file was moved, when that happened on open.
        self.moved = moved

    # ---------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | os.PathLike[str], timeout: float = 60.0) -> Store:
        path = Path(path)
        problem = check_store_path(path)
        if problem:
            raise StorePathError(problem)
        path.parent.mkdir(parents=True, exist_ok=True)
        moved = None
        try:
            conn = cls._connect(path, timeout)
        except sqlite3.DatabaseError as e:
            if not path.is_file() or not _sqlite_shaped(path):
                # Never move what is not a SQLite file (a directory, someone's text file).
                raise StorePathError(f"{path}: {e}; it is not a SQLite file, so hpspec "
                                     "leaves it where it is") from e
            moved = _move_aside(path, str(e))
            conn = cls._connect(path, timeout)
        return cls(path, conn, moved)

    @classmethod
    def open_for_writing(cls, path: str | os.PathLike[str], timeout: float = 60.0) -> Store:
        """Open an existing store to write to it, never moving it aside (``open`` would when
        it is damaged): for ``hpspec prune``, after ``open_readonly`` checked it is ours."""
        path = Path(path)
        return cls(path, cls._connect(path, timeout))

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str]) -> Store:
        """Open for looking only: nothing is created, migrated, moved or written.

        With no ``-wal`` file beside it the main file holds every committed row, and it is
        read with ``immutable=1`` (SQLite's ``mode=ro`` would create the ``-wal`` and ``-shm``
        side files, and fails on a read-only file system). With one, a writer may be
        running, so ``mode=ro`` reads its WAL too (the side files exist already). Raises
        StoreDamaged naming the file when it is not a readable hpspec store.
        """
        path = Path(path)
        if path.is_dir():
            raise StoreDamaged(f"{path} is a directory, not a results store; fix: --store "
                               "PATH/TO/results.sqlite")
        uri = path.resolve().as_uri()
        last: Exception | None = None
        wal = path.with_name(path.name + "-wal").exists()
        for flags in (("?mode=ro", "?mode=ro&immutable=1") if wal else ("?mode=ro&immutable=1",)):
            try:
                conn = sqlite3.connect(uri + flags, uri=True, isolation_level=None,
                                       check_same_thread=False)
            except sqlite3.Error as e:
                last = e
                continue
            try:
                app = conn.execute("PRAGMA application_id").fetchone()[0]
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as e:
                conn.close()
                last = e
                if "not a database" in str(e) or "malformed" in str(e):
                    break  # the other mode cannot help
                continue
            if app != APPLICATION_ID:
                conn.close()
                raise StoreDamaged(f"{path} is not an hpspec results store (application_id "
                                   f"{app}); fix: --store the .hpspec/results.sqlite file")
            if version > SCHEMA_VERSION:
                conn.close()
                raise StoreDamaged(f"{path} was written by a newer hpspec (schema {version}, "
                                   f"this one reads up to {SCHEMA_VERSION}); fix: upgrade hpspec")
            return cls(path, conn)
        raise StoreDamaged(f"{path} cannot be read as an SQLite store ({last})")

    @classmethod
    def _connect(cls, path: Path, timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            app, version = (conn.execute("PRAGMA application_id").fetchone()[0],
                            conn.execute("PRAGMA user_version").fetchone()[0])
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            if app != APPLICATION_ID and (tables or version):
                raise sqlite3.DatabaseError(
                    f"not an hpspec store (application_id {app}, tables {tables[:5]})")
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"written by a newer hpspec (schema {version}, this one reads up to "
                    f"{SCHEMA_VERSION})")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            cls._migrate(conn, version)
            conn.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int) -> None:
        if version >= SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]  # another process?
            for v in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v]:
                    conn.execute(stmt)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Fold the write-ahead log into the database file, then close: the session's
        results then live in one file, and the next open does not replay a long WAL."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # another process holds the file; the last to close folds the log in
        self.conn.close()

    def mark_interrupted(self) -> list[int]:
        """Runs still 'running' whose process on this host is gone (killed, crashed, or the
        machine rebooted) become 'interrupted'; returns their ids. A run whose process is
        alive, or that was started on another host, is left as it is."""
        host = socket.gethostname()
        gone = []
        for run_id, env_text in self.conn.execute(
                "SELECT id, environment FROM runs WHERE status = 'running'").fetchall():
            try:
                env = json.loads(env_text)
                pid = int(env["pid"])
            except (ValueError, KeyError, TypeError):
                continue  # written before runs recorded their process: cannot tell
            if env.get("host") == host and not _alive(pid):
                gone.append(run_id)
        for run_id in gone:
            self._write("UPDATE runs SET status = 'interrupted' WHERE id = ? AND "
                        "status = 'running'", (run_id,))
        return gone

    # ------------------------------------------------------------------------------ writes

    def _write(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        # One statement per transaction (autocommit): a lock is held for milliseconds.
        for attempt in range(20):
            try:
                return self.conn.execute(sql, args)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                time.sleep(0.05 * (attempt + 1))
        return self.conn.execute(sql, args)

    def begin_run(self, environment: Mapping[str, Any], name: str | None = None,
                  args: Sequence[str] = ()) -> int:
        # Which process owns the run, so that a later open can tell a killed run (its
        # process gone) from one still going in another terminal.
        env = {**dict(environment), "pid": os.getpid(), "host": socket.gethostname()}
        cur = self._write(
            "INSERT INTO runs (started, name, fingerprint, environment, args) "
            "VALUES (?, ?, ?, ?, ?)",
            (time.time(), name, fingerprint(environment), json.dumps(env),
             json.dumps(list(args))),
        )
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def finish_run(self, run_id: int, status: str) -> None:
        self._write("UPDATE runs SET finished = ?, status = ? WHERE id = ?",
                    (time.time(), status, run_id))

    def put_seed(self, run_id: int, key: str, experiment: str, cell_id: str,
                 params: Mapping[str, Any], device: str, result: SeedResult,
                 cached: bool = False) -> None:
        """Record one seed in a run. A seed the run holds already is not recorded twice (under
        xdist a claim's worker reads from the cache the seeds another worker just stored for
        this run, or, with --hpspec-cache=refresh, trains them again): the run's record
        counts each seed once."""
        if self.conn.execute(
                "SELECT 1 FROM seeds WHERE run_id = ? AND cache_key = ? LIMIT 1",
                (run_id, key)).fetchone():
            return
        self._write(
            "INSERT INTO seeds (run_id, cache_key, experiment, cell_id, params, seed, device, "
            "result, cached, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, key, experiment, cell_id, json.dumps(dict(params), default=repr),
             result.seed, device, json.dumps(result.to_dict(), allow_nan=False), int(cached),
             time.time()),
        )

    def put_cell(self, run_id: int, experiment: str, cell_id: str, params: Mapping[str, Any],
                 outcome: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO cells (run_id, experiment, cell_id, params, outcome) "
            "VALUES (?, ?, ?, ?, ?)",
            (run_id, experiment, cell_id, json.dumps(dict(params), default=repr), outcome),
        )

    def drop_cell(self, run_id: int, experiment: str, cell_id: str) -> None:
        self._write("DELETE FROM cells WHERE run_id = ? AND experiment = ? AND cell_id = ?",
                    (run_id, experiment, cell_id))

    def update_environment(self, run_id: int, environment: Mapping[str, Any]) -> None:
        """Complete a run's environment (and so its fingerprint) once it is known: a run is
        begun before anything trained, and under xdist its controller never loads torch."""
        row = self.conn.execute("SELECT environment FROM runs WHERE id = ?",
                                (run_id,)).fetchone()
        if row is None:
            return
        try:
            env = dict(json.loads(row[0]))
        except (TypeError, ValueError):
            env = {}
        env.update({k: v for k, v in environment.items() if v is not None})
        self._write("UPDATE runs SET environment = ?, fingerprint = ? WHERE id = ?",
                    (json.dumps(env, default=str), fingerprint(env), run_id))

    def put_verdict(self, run_id: int, experiment: str, cell_id: str | None, claim: str,
                    outcome: str, p_pass: float | None, p_fail: float | None,
                    message: str) -> None:
        self._write(
            "INSERT INTO verdicts (run_id, experiment, cell_id, claim, outcome, p_pass, "
            "p_fail, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, experiment, cell_id, claim, outcome, p_pass, p_fail, message),
        )

    # ------------------------------------------------------------------------------- reads

    def cached_seed(self, key: str) -> SeedResult | None:
        """The newest complete result stored under a cache key."""
        row = self.conn.execute(
            "SELECT result FROM seeds WHERE cache_key = ? ORDER BY created DESC LIMIT 1",
            (key,)).fetchone()
        if row is None:
            return None
        try:
            return SeedResult.from_dict(json.loads(row[0]))
        except (ValueError, KeyError, TypeError):
            return None  # a damaged row: train again

    def runs(self, limit: int | None = None) -> list[RunRow]:
        sql = ("SELECT r.id, r.started, r.finished, r.name, r.status, r.fingerprint, "
               "r.environment, count(s.id), coalesce(sum(s.cached), 0) FROM runs r "
               "LEFT JOIN seeds s ON s.run_id = r.id GROUP BY r.id ORDER BY r.id DESC")
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [RunRow(r[0], r[1], r[2], r[3], r[4], r[5],
                       _loads(r[6], self.path, f"run {r[0]}'s environment"), r[7], r[8])
                for r in self.conn.execute(sql)]

    def find_run(self, ref: str, exclude: int | None = None) -> RunRow | None:
        """A run by id, by saved name (its newest), or ``latest`` (newest finished)."""
        rows = [r for r in self.runs() if r.id != exclude]
        if ref == "latest":
            return next((r for r in rows if r.finished is not None), None)
        if ref.isdigit():
            return next((r for r in rows if r.id == int(ref)), None)
        return next((r for r in rows if r.name == ref), None)

    def run_cells(self, run_id: int) -> dict[tuple[str, str], dict[str, Any]]:
        """Per (experiment, cell): params, outcome and the seeds' results of one run."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for exp, cell, params, outcome in self.conn.execute(
                "SELECT experiment, cell_id, params, outcome FROM cells WHERE run_id = ?",
                (run_id,)):
            out[(exp, cell)] = {"params": _loads(params, self.path,
                                                 f"run {run_id} cell {cell}'s params"),
                                "outcome": outcome, "seeds": []}
        for row_id, exp, cell, params, result in self.conn.execute(
                "SELECT id, experiment, cell_id, params, result FROM seeds WHERE run_id = ? "
                "ORDER BY seed", (run_id,)):
            what = f"seed row {row_id} (run {run_id}, cell {cell})"
            entry = out.setdefault((exp, cell), {"params": _loads(params, self.path, what),
                                                 "outcome": "?", "seeds": []})
            entry["seeds"].append(_loads(result, self.path, what))
        return out

    def cell_outcome(self, run_id: int, experiment: str, cell_id: str) -> str | None:
        row = self.conn.execute(
            "SELECT outcome FROM cells WHERE run_id = ? AND experiment = ? AND cell_id = ?",
            (run_id, experiment, cell_id)).fetchone()
        return None if row is None else str(row[0])

    def verdicts(self, run_id: int) -> list[dict[str, Any]]:
        cols = ("experiment", "cell_id", "claim", "outcome", "p_pass", "p_fail", "message")
        return [dict(zip(cols, r, strict=True)) for r in self.conn.execute(
            f"SELECT {', '.join(cols)} FROM verdicts WHERE run_id = ?", (run_id,))]

    def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` runs (named runs are kept); returns how many."""
        if keep < 0:  # [-3:] would keep the *oldest* three's complement: refuse it
            raise ValueError(f"keep = {keep} must be 0 or more")
        ids = [r.id for r in self.runs() if r.name is None][keep:]
        for run_id in ids:
            self._write("DELETE FROM runs WHERE id = ?", (run_id,))
        if ids:
            self.conn.execute("VACUUM")
        return len(ids)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: do not claim it died
    return True


def _move_aside(path: Path, why: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.unreadable-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.unreadable-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    import warnings

    warnings.warn(StoreMoved(
        f"hpspec store {path}: {why}; moved it to {target} and started a fresh store "
        "(nothing was deleted)"), stacklevel=3)
    return target
