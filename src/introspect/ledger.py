"""The audit ledger's storage: one SQLite file per frozen explanation set, append-only and hash-chained.

Tables:
  meta(key, value)                 set_hash (pairs + fixed labels + task, content-hashed), task, created, schema
  items(idx, pair_id, pair, changed, letter, m0_answer, m0_answer_without)
                                   the frozen set: each pair, its fixed label, and the behaviour the label came from
  versions(id, tag, ..., prev_hash, row_hash)
                                   one row per audited model version; row_hash = sha256(prev_hash + the row's fields +
                                   its verdict rows), so editing any stored number breaks the chain (`verify`)
  verdicts(version_id, idx, ...)   per item: behaviour, the explanation as parsed, Self/Orig correctness

The chain starts from a genesis hash of the whole `meta` table (which holds the frozen set's hash), so editing meta
or the frozen items breaks it too (schema 2; a schema-1 ledger starts from zeros and says so). The chain alone cannot
show a removed *newest* row, an emptied ledger, or a chain recomputed after an edit: the head (row count + last
row_hash) is printed by `verify` and can be kept elsewhere — `verify --head N:HASH` or a witness file (`audit add
--witness F` appends each new head; `verify --witness F` checks that every recorded head is still in the chain).
With INTROSPECT_LEDGER_KEY set at `audit init`, every hash is an HMAC under that key, so the chain cannot be
recomputed without it (docs/audit.md states what each of these protects against).

Writers take SQLite's write lock (BEGIN IMMEDIATE) for the whole append, so two `audit add` processes both land,
one after the other, each chained to the one before it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

SCHEMA = 2
KEY_ENV = "INTROSPECT_LEDGER_KEY"  # set at `audit init`: the chain is an HMAC under this key
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


def _digest(*parts: Any, key: bytes | None = None) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hmac.new(key, blob, hashlib.sha256).hexdigest() if key else hashlib.sha256(blob).hexdigest()


def chain_key(info: dict[str, str], where: str) -> bytes | None:
    """The HMAC key of a keyed ledger (from INTROSPECT_LEDGER_KEY), None for an unkeyed one; a missing or wrong key
    is an error that says so (not a tamper report)."""
    if info.get("keyed") != "hmac-sha256":
        return None
    raw = os.environ.get(KEY_ENV)
    if not raw:
        raise UserError(f"{where} is a keyed ledger: set {KEY_ENV} to the key it was created with")
    key = raw.encode()
    if _digest("key check", key=key) != info.get("key_check"):
        raise UserError(f"{where}: {KEY_ENV} is not the key this ledger was created with")
    return key


def genesis(info: dict[str, str], key: bytes | None = None) -> str:
    """Where the chain starts: a hash of all of `meta` (schema >= 2), zeros for a schema-1 ledger."""
    if int(info.get("schema", "1")) < 2:
        return GENESIS
    return _digest("introspect audit ledger genesis", sorted(info.items()), key=key)


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
    except sqlite3.OperationalError as e:
        text = str(e)
        if "locked" in text or "busy" in text:
            raise UserError(f"{path} is busy: another process held its write lock for over 120 s; try again when it "
                            f"is done") from None
        if "readonly" in text or "read-only" in text:
            raise UserError(f"{path} (or its folder) is read-only: `audit add` needs to write it and its -wal file") from None
        raise UserError(f"{path}: the ledger is corrupt ({e})") from None
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
                keyed = {}
                if os.environ.get(KEY_ENV):
                    keyed = {"keyed": "hmac-sha256", "key_check": _digest("key check", key=os.environ[KEY_ENV].encode())}
                con.executemany("INSERT INTO meta VALUES (?, ?)", [*info.items(), ("set_hash", h), ("schema", str(SCHEMA)),
                                                                 *keyed.items()])
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


def _row_hash(prev: str, version: dict[str, Any], verdicts: list[dict[str, Any]], key: bytes | None = None) -> str:
    return _digest(prev, [version[k] for k in VERSION_FIELDS], [[v[k] for k in VERDICT_FIELDS] for v in verdicts],
                   key=key)


def append(path: str | Path, version: dict[str, Any], verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add one model version with its per-item verdicts, chained to the last row; atomic under concurrent writers."""
    with connect(path) as con:
        con.execute("BEGIN IMMEDIATE")  # the write lock: a second writer waits here (timeout 120 s)
        try:
            if con.execute("SELECT 1 FROM versions WHERE tag = ?", (version["tag"],)).fetchone():
                raise UserError(f"{path} already has a version tagged {version['tag']!r}: choose another --tag")
            info = meta(con)
            key = chain_key(info, str(path))
            last = con.execute("SELECT row_hash FROM versions ORDER BY id DESC LIMIT 1").fetchone()
            prev = last["row_hash"] if last else genesis(info, key)
            row = {**version, "prev_hash": prev, "row_hash": _row_hash(prev, version, verdicts, key)}
            cols = [*VERSION_FIELDS, "prev_hash", "row_hash"]
            cur = con.execute(f"INSERT INTO versions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                              [row[k] for k in cols])
            con.executemany(f"INSERT INTO verdicts (version_id, {', '.join(VERDICT_FIELDS)}) "
                            f"VALUES (?{', ?' * len(VERDICT_FIELDS)})",
                            [(cur.lastrowid, *(v[k] for k in VERDICT_FIELDS)) for v in verdicts])
            n = con.execute("SELECT count(*) FROM versions").fetchone()[0]
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    row["head"] = f"{n}:{row['row_hash']}"
    return row


def versions(con: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in con.execute("SELECT * FROM versions ORDER BY id")]


def verdicts(con: sqlite3.Connection, version_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in con.execute(f"SELECT {', '.join(VERDICT_FIELDS)} FROM verdicts WHERE version_id = ? "
                                         f"ORDER BY idx", (version_id,))]


def verify(con: sqlite3.Connection, where: str) -> int:
    """Recompute the hash chain from the genesis hash of `meta`; a modified, removed or re-ordered row, or an edited
    meta, is an error naming it. Returns the row count (`head` gives the head hash)."""
    check_items(con, where)
    info = meta(con)
    key = chain_key(info, where)
    prev = genesis(info, key)
    rows = versions(con)
    for v in rows:
        if v is rows[0] and v["prev_hash"] != prev and v["prev_hash"] != GENESIS:
            raise UserError(f"{where}: the chain no longer starts from the hash of the ledger's meta table (the M0, "
                            f"task, creation time it records): meta was edited, or the chain recomputed, after version "
                            f"{v['tag']!r} was written (tamper check failed)")
        if v["prev_hash"] != prev or _row_hash(prev, v, verdicts(con, v["id"]), key) != v["row_hash"]:
            raise UserError(f"{where}: version {v['tag']!r} (row {v['id']}) does not match its hash: the ledger was "
                            f"modified after this row was written (tamper check failed)")
        prev = v["row_hash"]
    return len(rows)


def head(con: sqlite3.Connection) -> str:
    """The chain's head as `N:HASH` (N rows, HASH the last row's hash; `0:` + the genesis hash when empty): the one
    value to keep outside the ledger (`verify --head`, a witness file)."""
    rows = versions(con)
    info = meta(con)
    last = rows[-1]["row_hash"] if rows else genesis(info, chain_key(info, "ledger"))
    return f"{len(rows)}:{last}"


def parse_head(text: str, where: str) -> tuple[int, str]:
    n, sep, h = text.strip().partition(":")
    if not sep or not n.isdigit() or len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise UserError(f"{where}: a head is N:HASH (rows, then the 64-hex-digit hash `audit verify` prints), got {text!r}")
    return int(n), h


def check_head(con: sqlite3.Connection, recorded: str, where: str, origin: str = "--head") -> None:
    """A head recorded earlier must still be in today's chain: row N has hash HASH. Catches the newest rows removed
    (the chain is shorter), an emptied ledger, and a chain recomputed after an edit (row N's hash differs)."""
    n, h = parse_head(recorded, origin)
    rows = versions(con)
    info = meta(con)
    have = rows[n - 1]["row_hash"] if 0 < n <= len(rows) else (genesis(info, chain_key(info, where)) if n == 0 else None)
    if have is None:
        raise UserError(f"{where}: {origin} records {n} version(s) (head {h[:12]}), but the ledger holds {len(rows)}: "
                        f"versions were removed after that head was recorded")
    if have != h:
        raise UserError(f"{where}: {origin} records row {n} with hash {h[:12]}, the ledger's row {n} hashes to "
                        f"{have[:12]}: the chain was rewritten after that head was recorded")


def witness(path: Path, ledger_path: str | Path, recorded: str, tag: str) -> None:
    """Append a head to a witness file (JSONL, one head per line; keep it outside the ledger's reach)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"ledger": str(ledger_path), "head": recorded, "tag": tag,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_witness(con: sqlite3.Connection, path: Path, where: str) -> int:
    """Every head in a witness file must still be in the chain (`check_head`); returns how many were checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist (flag --witness): the witness file `audit add --witness` writes")
    n = 0
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            recorded = json.loads(line)["head"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}:{i}: not a witness line (JSON with a 'head')") from None
        check_head(con, recorded, where, origin=f"{path}:{i}")
        n += 1
    return n
