"""The results store: one SQLite file per sweep (`<sweep folder>/results.sqlite`).

It survives restarts and is shared by every worker of a sweep (several processes may write
to it: WAL journal and a busy timeout). A run is one variant trained with one seed, keyed by
the hash of its resolved recipe, so editing a variant's settings makes a new run and a
finished run is never redone.

Tables:
  meta(key, value)                           held-out hash, sweep name, ...
  runs(id, variant, seed, config_id, kind, status, settings, recipe, run_dir, data_hash,
       train_seconds, tokens_per_second, eval_seconds, started, finished, error)
  metrics(run_id, metric, mean, low, high, n)
  scores(run_id, example_id, metric, value)  per-example scores for paired comparisons
  serving(run_id, file, bytes, ttft_seconds, tokens_per_second, peak_rss_mib, threads, cpu,
          load_before, load_after, measured)  what the run's GGUF costs to serve (tunelab.serve.cost)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.runs import now

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY,
  variant TEXT NOT NULL,
  seed INTEGER,
  config_id TEXT,
  kind TEXT NOT NULL DEFAULT 'variant',       -- 'variant' or 'reference' (an untuned base model)
  status TEXT NOT NULL DEFAULT 'pending',     -- pending, prepared, trained, done, failed
  settings TEXT,
  recipe TEXT,
  run_dir TEXT,
  data_hash TEXT,
  train_seconds REAL,
  tokens_per_second REAL,
  eval_seconds REAL,
  started TEXT,
  finished TEXT,
  error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
  run_id TEXT NOT NULL, metric TEXT NOT NULL, mean REAL, low REAL, high REAL, n INTEGER,
  PRIMARY KEY (run_id, metric)
);
CREATE TABLE IF NOT EXISTS scores (
  run_id TEXT NOT NULL, example_id TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
  PRIMARY KEY (run_id, example_id, metric)
);
CREATE TABLE IF NOT EXISTS serving (
  run_id TEXT PRIMARY KEY, file TEXT NOT NULL, bytes INTEGER, ttft_seconds REAL, tokens_per_second REAL,
  peak_rss_mib REAL, threads INTEGER, cpu TEXT, load_before REAL, load_after REAL, measured TEXT
);
"""
SERVING_FIELDS = [
    "file",
    "bytes",
    "ttft_seconds",
    "tokens_per_second",
    "peak_rss_mib",
    "threads",
    "cpu",
    "load_before",
    "load_after",
    "measured",
]

FIELDS = [
    "variant",
    "seed",
    "config_id",
    "kind",
    "status",
    "settings",
    "recipe",
    "run_dir",
    "data_hash",
    "train_seconds",
    "tokens_per_second",
    "eval_seconds",
    "started",
    "finished",
    "error",
]


def store_path(folder: Path) -> Path:
    """The results store of the sweep whose output folder is `folder`."""
    return Path(folder) / "results.sqlite"


class ResultsStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- meta
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # ---------------------------------------------------------------- runs
    def get_run(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return _row(row) if row else None

    def upsert_run(self, run_id: str, **values: Any) -> None:
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise KeyError(f"unknown run fields: {unknown}")
        values = {
            k: (json.dumps(v, default=str) if k in ("settings", "recipe") and not isinstance(v, str) else v) for k, v in values.items()
        }
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone():
                if values:
                    db.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in values)} WHERE id=?", (*values.values(), run_id))
            else:
                cols = ["id", *values]
                db.execute(f"INSERT INTO runs({', '.join(cols)}) VALUES({', '.join('?' for _ in cols)})", (run_id, *values.values()))

    def set_status(self, run_id: str, status: str, **values: Any) -> None:
        if status in ("done", "failed"):
            values.setdefault("finished", now())
        self.upsert_run(run_id, status=status, **values)

    def runs(self, kind: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM runs", ()
        if kind:
            q, args = q + " WHERE kind=?", (kind,)
        return [_row(r) for r in self.db.execute(q + " ORDER BY rowid", args)]

    # ---------------------------------------------------------------- results
    def save_results(self, run_id: str, metrics: dict[str, dict], scores: list[tuple[str, str, float]]) -> None:
        """metrics: name -> {mean, low, high, n}; scores: (example_id, metric, value) rows."""
        with self.transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM scores WHERE run_id=?", (run_id,))
            db.executemany(
                "INSERT INTO metrics(run_id, metric, mean, low, high, n) VALUES(?,?,?,?,?,?)",
                [(run_id, m, v.get("mean"), v.get("low"), v.get("high"), v.get("n")) for m, v in metrics.items()],
            )
            db.executemany(
                "INSERT INTO scores(run_id, example_id, metric, value) VALUES(?,?,?,?)", [(run_id, ex, m, val) for ex, m, val in scores]
            )

    def metrics(self, run_id: str) -> dict[str, dict]:
        return {
            r["metric"]: {"mean": r["mean"], "low": r["low"], "high": r["high"], "n": r["n"]}
            for r in self.db.execute("SELECT * FROM metrics WHERE run_id=?", (run_id,))
        }

    def scores(self, run_id: str) -> dict[str, dict[str, float]]:
        """metric -> {example_id: value}."""
        out: dict[str, dict[str, float]] = {}
        for r in self.db.execute("SELECT example_id, metric, value FROM scores WHERE run_id=?", (run_id,)):
            if r["value"] is not None:
                out.setdefault(r["metric"], {})[r["example_id"]] = r["value"]
        return out

    # ---------------------------------------------------------------- serving cost
    def save_serving(self, run_id: str, values: dict[str, Any]) -> None:
        """What the run's GGUF costs to serve (SERVING_FIELDS), replacing an earlier measurement."""
        unknown = set(values) - set(SERVING_FIELDS)
        if unknown:
            raise KeyError(f"unknown serving fields: {unknown}")
        cols = ["run_id", *values]
        with self.transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO serving({', '.join(cols)}) VALUES({', '.join('?' for _ in cols)})", (run_id, *values.values())
            )

    def serving(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM serving WHERE run_id=?", (run_id,)).fetchone()
        return dict(row) if row else None


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in ("settings", "recipe"):
        if d.get(k):
            d[k] = json.loads(d[k])
    return d
