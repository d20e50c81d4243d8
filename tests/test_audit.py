"""The audit ledger on the tiny model: init / add / show / diff round trip, tamper detection, two concurrent writers,
clear errors on another set or a corrupt file."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from introspect import audit, cli, labels, ledger
from introspect import tables as tbl
from introspect.errors import UserError
from introspect.train import LossWeights, TrainConfig
from introspect.train import trainer as T


@pytest.fixture(scope="module")
def frozen(tiny_tables: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A frozen set of 8 pairs (M0 = tiny-random, its own labels) and one trained checkpoint of it."""
    out = tmp_path_factory.mktemp("audit")
    pairs_table, labels_table = tiny_tables
    cfg = TrainConfig(behavior=str(pairs_table), labels=str(labels_table), out_dir=str(out / "run"),
                      model="tiny-random", steps=3, lr=5e-2, warmup_steps=0, schedule="constant", checkpoint_every=3,
                      probe_every=0, precision="fp32", weights=LossWeights(explanation=1.0, behavior_kl=0.0))
    T.train(cfg)
    return {"pairs": pairs_table, "labels": labels_table,
            "checkpoint": out / "run" / "checkpoints" / "step_000003", "dir": out}


def _add(path: Path, model: str, tag: str) -> None:
    assert cli.main(["audit", "add", str(path), model, "--tag", tag, "--precision", "fp32", "--n-boot", "50",
                     "--max-new-tokens", "8"]) == 0


@pytest.mark.slow
def test_init_add_show_diff_round_trip(frozen, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ledger.sqlite"
    assert cli.main(["audit", "init", str(path), "--pairs", str(frozen["pairs"]), "--labels", str(frozen["labels"])]) == 0
    _add(path, "tiny-random", "m0")
    _add(path, str(frozen["checkpoint"]), "v2")
    capsys.readouterr()
    assert cli.main(["audit", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| m0 |" in out and "| v2 |" in out and "hash chain verified" in out
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    with ledger.connect(path) as con:
        rows = ledger.versions(con)
        assert [r["tag"] for r in rows] == ["m0", "v2"] and rows[1]["prev_hash"] == rows[0]["row_hash"]
        assert rows[0]["agreement"] == 1.0 and rows[0]["drift"] == 0.0  # M0 against its own labels
        assert rows[0]["model_hash"] != rows[1]["model_hash"]
        assert len(ledger.verdicts(con, rows[1]["id"])) == 8
    counts = audit.diff(path, "m0", "v2", tmp_path / "diff.csv")
    with open(tmp_path / "diff.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and list(table[0])[:2] == ["pair_id", "answer_m0"]
    assert sum(int(r["behaviour_changed"]) for r in table) == counts["behaviour_changed"]
    assert counts["items"] == 8 and 0 <= counts["explanation_followed"] <= counts["behaviour_changed"] <= 8
    # init again with the same set: nothing changes; with another set: a clear error, exit 2
    assert cli.main(["audit", "init", str(path), "--pairs", str(frozen["pairs"]), "--labels", str(frozen["labels"])]) == 0
    noisy = tmp_path / "noisy.parquet"
    lab, meta = tbl.read_table(frozen["labels"])
    tbl.write_table(noisy, labels.add_noise(lab, 0.5, 0, ["A", "B", "C", "D"]), meta)
    capsys.readouterr()
    assert cli.main(["audit", "init", str(path), "--pairs", str(frozen["pairs"]), "--labels", str(noisy)]) == 2
    assert "already freezes another explanation set" in capsys.readouterr().err
    # a BehaviorTable given as --labels (no changed/letter columns): one line naming the flag, not a traceback
    assert cli.main(["audit", "init", str(tmp_path / "other.sqlite"), "--pairs", str(frozen["pairs"]), "--labels",
                     str(frozen["pairs"])]) == 2
    assert "--labels takes a labels table" in capsys.readouterr().err
    assert cli.main(["audit", "diff", str(path), "m0", "v9"]) == 2
    with pytest.raises(UserError, match="already has a version tagged 'v2'"):
        audit.add(path, "tiny-random", tag="v2", precision="fp32", n_boot=10, max_new_tokens=4)


@pytest.mark.slow
@pytest.mark.parametrize("edit", [
    "UPDATE versions SET self_em = 0.99 WHERE tag = 'm0'",
    "UPDATE verdicts SET self_ok = 1 - self_ok WHERE idx = 3",
    "DELETE FROM versions WHERE tag = 'm0'",
    "UPDATE items SET letter = 'D' WHERE idx = 0",
])
def test_tampering_is_detected(frozen, tmp_path: Path, edit: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ledger.sqlite"
    audit.init(path, frozen["pairs"], frozen["labels"])
    _add(path, "tiny-random", "m0")
    _add(path, "tiny-random", "m0-again")
    assert audit.verify(path) == 2
    con = sqlite3.connect(path)
    con.execute(edit)
    con.commit()
    con.close()
    capsys.readouterr()
    assert cli.main(["audit", "verify", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tamper check failed" in err or "modified after `audit init`" in err


@pytest.mark.slow
def test_two_concurrent_adds_both_land(frozen, tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    audit.init(path, frozen["pairs"], frozen["labels"])
    cmd = [sys.executable, "-m", "introspect.cli", "audit", "add", str(path), "--precision", "fp32", "--n-boot", "20",
           "--max-new-tokens", "6"]
    procs = [subprocess.Popen([*cmd, model, "--tag", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for model, tag in (("tiny-random", "a"), (str(frozen["checkpoint"]), "b"))]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    assert audit.verify(path) == 2
    with ledger.connect(path) as con:
        assert sorted(r["tag"] for r in ledger.versions(con)) == ["a", "b"]


def test_corrupt_or_foreign_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    assert cli.main(["audit", "show", str(junk)]) == 2
    assert "not a readable audit ledger" in capsys.readouterr().err
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    assert cli.main(["audit", "verify", str(other)]) == 2
    assert "not an introspect audit ledger" in capsys.readouterr().err
    assert cli.main(["audit", "show", str(tmp_path / "missing.sqlite")]) == 2
    assert "audit init" in capsys.readouterr().err


def _sql(path: Path, *statements: str) -> None:
    con = sqlite3.connect(path)
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


def _recompute_chain(path: Path) -> None:
    """What an attacker without the key does after editing a row: recompute every unkeyed hash from the start."""
    import hashlib
    import json

    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    info = {r["key"]: r["value"] for r in con.execute("SELECT key, value FROM meta")}
    prev = ledger.genesis(info)
    for v in [dict(r) for r in con.execute("SELECT * FROM versions ORDER BY id")]:
        vs = [[dict(r)[k] for k in ledger.VERDICT_FIELDS] for r in
              con.execute("SELECT * FROM verdicts WHERE version_id = ? ORDER BY idx", (v["id"],))]
        blob = json.dumps([prev, [v[k] for k in ledger.VERSION_FIELDS], vs], sort_keys=True, default=str).encode()
        h = hashlib.sha256(blob).hexdigest()
        con.execute("UPDATE versions SET prev_hash = ?, row_hash = ? WHERE id = ?", (prev, h, v["id"]))
        prev = h
    con.commit()
    con.close()


NEWEST = ("DELETE FROM verdicts WHERE version_id=(SELECT max(id) FROM versions)",
          "DELETE FROM versions WHERE id=(SELECT max(id) FROM versions)")


@pytest.mark.slow
@pytest.mark.parametrize("attack, caught_by_chain_alone", [
    (NEWEST, False),
    (("DELETE FROM verdicts", "DELETE FROM versions"), False),
    (("UPDATE meta SET value = 'another-model' WHERE key = 'm0'",), True),
    (("UPDATE meta SET value = '2020-01-01T00:00:00+00:00' WHERE key = 'created'",), True),
    (("UPDATE versions SET self_em = 0.99 WHERE tag = 'v1'", "RECOMPUTE"), False),
])
def test_attacks_are_caught_by_the_head_and_the_witness(frozen, tmp_path: Path, attack, caught_by_chain_alone,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path, wit = tmp_path / "ledger.sqlite", tmp_path / "elsewhere" / "witness.jsonl"
    audit.init(path, frozen["pairs"], frozen["labels"])
    for tag in ("v1", "v2"):
        assert cli.main(["audit", "add", str(path), "tiny-random", "--tag", tag, "--precision", "fp32", "--n-boot",
                         "20", "--max-new-tokens", "6", "--witness", str(wit)]) == 0
    capsys.readouterr()
    assert cli.main(["audit", "verify", str(path), "--witness", str(wit)]) == 0
    head = capsys.readouterr().out.split("[audit] head ")[1].split()[0]
    assert head.startswith("2:") and len(head) == 66 and len(wit.read_text().splitlines()) == 2
    _sql(path, *(s for s in attack if s != "RECOMPUTE"))
    if "RECOMPUTE" in attack:
        _recompute_chain(path)
    assert (cli.main(["audit", "verify", str(path)]) == 2) == caught_by_chain_alone
    capsys.readouterr()
    assert cli.main(["audit", "verify", str(path), "--witness", str(wit)]) == 2
    assert cli.main(["audit", "verify", str(path), "--head", head]) == 2
    err = capsys.readouterr().err
    assert "removed after that head" in err or "rewritten after that head" in err or "tamper check failed" in err


def test_a_keyed_chain_cannot_be_recomputed_without_the_key(frozen, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(ledger.KEY_ENV, "a secret only the auditor holds")
    path = tmp_path / "keyed.sqlite"
    audit.init(path, frozen["pairs"], frozen["labels"])
    _add(path, "tiny-random", "v1")
    assert audit.verify(path) == 1
    _sql(path, "UPDATE versions SET self_em = 0.99 WHERE tag = 'v1'")
    _recompute_chain(path)
    capsys.readouterr()
    assert cli.main(["audit", "verify", str(path)]) == 2
    assert "tamper check failed" in capsys.readouterr().err
    monkeypatch.setenv(ledger.KEY_ENV, "a guess")
    assert cli.main(["audit", "verify", str(path)]) == 2
    assert "not the key this ledger was created with" in capsys.readouterr().err
    monkeypatch.delenv(ledger.KEY_ENV)
    assert cli.main(["audit", "verify", str(path)]) == 2
    assert f"set {ledger.KEY_ENV}" in capsys.readouterr().err
