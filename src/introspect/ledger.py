"""The audit ledger's storage: one SQLite file per frozen explanation set, append-only and hash-chained.

Tables:
  meta(key, value)                 set_hash (pairs + fixed labels + task, content-hashed), task, created, schema
  items(idx, pair_id, pair, changed, letter, m0_answer, m0_answer_without)
                                   the frozen set: each pair, its fixed label, and the behaviour the label came from
  versions(id, tag, ..., prev_hash, row_hash)
                                   one row per audited model version; row_hash = sha256(prev_hash + the row's fields +
                                   its verdict rows), so editing any stored number breaks the chain (`verify`)
  verdicts(version_id, idx, ...)   per item: behaviour, the explanation as parsed, Self/Orig correctness

Writers take SQLite's write lock (BEGIN IMMEDIATE) for the whole append, so two `audit add` processes both land,
one after the other, each chained to the one before it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .config import UserError

SCHEMA = 1
VERSION_FIELDS = ("tag", "model", "checkpoint", "model_hash", "note", "created", "n", "self_em", "orig_em",
                  "self_minus_orig", "ci_low", "ci_high", "agreement", "drift", "n_label_differs", "result")
ITEM_FIELDS = ("pair_id", "pair", "changed", "letter", "m0_answer", "m0_answer_without")
VERDICT_FIELDS = ("idx", "answer", "answer_without", "text", "parsed_ok", "pred_changed", "pred_letter",
                  "self_changed", "self_letter", "self_ok", "orig_ok", "label_differs")
DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (idx INTEGER PRIMARY KEY, {", ".join(ITEM_FIELDS)});
CREATE TABLE IF NOT EXISTS versions (id INTEGER PRIMARY KEY AUTOINCREMENT, {", ".join(VERSION_FIELDS)},
    prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL, UNIQUE(tag));
CREATE TABLE IF NOT EXISTS verdicts (version_id INTEGER NOT NULL REFERENCES versions(id), {", ".join(VERDICT_FIELDS)},
    PRIMARY KEY (version_id, idx));
"""
GENESIS = "0" * 64


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def set_hash(items: list[dict[str, Any]], task_spec: dict[str, Any]) -> str:
    """The explanation set's identity: its pairs, fixed labels and M0 behaviour, and the task spec."""
    return _digest([[r[k] for k in ITEM_FIELDS] for r in items], task_spec)


@contextmanager
def connect(path: str | Path, *, create: bool = False) -> Iterator[sqlite3.Connection]:
    path = Path(path)
    if not create and not path.is_file():
        raise UserError(f"{path} does not exist: create it with `introspect audit init {path} --pairs P --labels L`")
    try:
        con = sqlite3.connect(path, timeout=120, isolation_level=None)  # explicit transactions below
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        if not create:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"meta", "items", "versions", "verdicts"} <= tables:
                raise UserError(f"{path} is not an introspect audit ledger (tables {sorted(tables)}): pass the file "
                                f"`introspect audit init` made")
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path} is not a readable audit ledger ({e}): the file is corrupt or not SQLite") from None
    try:
        yield con
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path}: the ledger is corrupt ({e})") from None
    finally:
        con.close()


def meta(con: sqlite3.Connection) -> dict[str, str]:
    return {r["key"]: r["value"] for r in con.execute("SELECT key, value FROM meta")}


def init(path: str | Path, items: list[dict[str, Any]], info: dict[str, str]) -> tuple[str, bool]:
    """Freeze an explanation set into a new ledger; (set hash, created). An existing ledger of the same set is left
    as it is; one of another set is an error."""
    h = set_hash(items, json.loads(info["task_spec"]))
    with connect(path, create=True) as con:
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, DDL.split(";")):  # not executescript: it would commit
                con.execute(statement)
            have = meta(con).get("set_hash")
            if have and have != h:
                raise UserError(f"{path} already freezes another explanation set (set hash {have[:12]}, these pairs and "
                                f"labels hash to {h[:12]}): choose a new ledger file")
            if not have:
                con.executemany("INSERT INTO meta VALUES (?, ?)", [*info.items(), ("set_hash", h), ("schema", str(SCHEMA))])
                con.executemany(f"INSERT INTO items (idx, {', '.join(ITEM_FIELDS)}) VALUES (?{', ?' * len(ITEM_FIELDS)})",
                                [(i, *(r[k] for k in ITEM_FIELDS)) for i, r in enumerate(items)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return h, not have


def items(con: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in con.execute(f"SELECT idx, {', '.join(ITEM_FIELDS)} FROM items ORDER BY idx")]


def check_items(con: sqlite3.Connection, where: str) -> None:
    """The frozen set must still hash to the set hash it was created with."""
    m = meta(con)
    if set_hash(items(con), json.loads(m["task_spec"])) != m["set_hash"]:
        raise UserError(f"{where}: the frozen explanation set (items table) was modified after `audit init`: the "
                        f"ledger cannot be trusted")


def _row_hash(prev: str, version: dict[str, Any], verdicts: list[dict[str, Any]]) -> str:
    return _digest(prev, [version[k] for k in VERSION_FIELDS], [[v[k] for k in VERDICT_FIELDS] for v in verdicts])


def append(path: str | Path, version: dict[str, Any], verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add one model version with its per-item verdicts, chained to the last row; atomic under concurrent writers."""
    with connect(path) as con:
        con.execute("BEGIN IMMEDIATE")  # the write lock: a second writer waits here (timeout 120 s)
        try:
            if con.execute("SELECT 1 FROM versions WHERE tag = ?", (version["tag"],)).fetchone():
                raise UserError(f"{path} already has a version tagged {version['tag']!r}: choose another --tag")
            last = con.execute("SELECT row_hash FROM versions ORDER BY id DESC LIMIT 1").fetchone()
            prev = last["row_hash"] if last else GENESIS
            row = {**version, "prev_hash": prev, "row_hash": _row_hash(prev, version, verdicts)}
            cols = [*VERSION_FIELDS, "prev_hash", "row_hash"]
            cur = con.execute(f"INSERT INTO versions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                              [row[k] for k in cols])
            con.executemany(f"INSERT INTO verdicts (version_id, {', '.join(VERDICT_FIELDS)}) "
                            f"VALUES (?{', ?' * len(VERDICT_FIELDS)})",
                            [(cur.lastrowid, *(v[k] for k in VERDICT_FIELDS)) for v in verdicts])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return row


def versions(con: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in con.execute("SELECT * FROM versions ORDER BY id")]


def verdicts(con: sqlite3.Connection, version_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in con.execute(f"SELECT {', '.join(VERDICT_FIELDS)} FROM verdicts WHERE version_id = ? "
                                         f"ORDER BY idx", (version_id,))]


def verify(con: sqlite3.Connection, where: str) -> int:
    """Recompute the hash chain; a modified, removed or re-ordered row is an error naming it. Returns the row count."""
    check_items(con, where)
    prev = GENESIS
    rows = versions(con)
    for v in rows:
        if v["prev_hash"] != prev or _row_hash(prev, v, verdicts(con, v["id"])) != v["row_hash"]:
            raise UserError(f"{where}: version {v['tag']!r} (row {v['id']}) does not match its hash: the ledger was "
                            f"modified after this row was written (tamper check failed)")
        prev = v["row_hash"]
    return len(rows)
