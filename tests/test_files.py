"""The one reader of row files and the one file hasher (files.py, hashing.py)."""

import hashlib

import pytest

from introspect.errors import UserError
from introspect.files import read_rows
from introspect.hashing import file_digest, files_digest


def test_read_rows_gives_line_numbers_for_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("\ufeffid,text\n1,\"two\nlines\"\n2,b\n", encoding="utf-8")
    assert read_rows(csv_file, need=("id",)) == [(3, {"id": "1", "text": "two\nlines"}), (4, {"id": "2", "text": "b"})]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"id": 1}\n\n{"id": 2}\n', encoding="utf-8")
    assert read_rows(jsonl, need=("id",)) == [(1, {"id": 1}), (3, {"id": 2})]


@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "id,text\n1,a,extra\n", "a.csv:2: wrong number of columns"),
    ("a.csv", "ident,text\n1,a\n", "a.csv:1: header must contain id"),
    ("a.jsonl", '{"id": 1}\n{"text": 2}\n', "a.jsonl:2: expected an object with fields id"),
    ("a.jsonl", '{"id": 1}\n{"id": \n', "a.jsonl:2: not valid JSON"),
    ("a.json", '{"id": 1}\nid\n', "a.json:2: not valid JSON"),  # not .csv: read as JSON Lines
])
def test_read_rows_names_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_rows(path, need=("id",), what="flag --x")


def test_read_rows_refuses_missing_files_and_non_utf8(tmp_path):
    with pytest.raises(UserError, match=r"does not exist \(flag --x\)"):
        read_rows(tmp_path / "none.csv", what="flag --x")
    bad = tmp_path / "b.csv"
    bad.write_bytes(b"id\n\xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_rows(bad)


def test_file_digest_is_the_recorded_algorithm_and_sees_changes(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1000)
    assert file_digest(f, "sha256") == hashlib.sha256(b"x" * 1000).hexdigest()[:16]
    assert file_digest(f) == hashlib.blake2b(b"x" * 1000, digest_size=8).hexdigest()
    before = file_digest(f)
    f.write_bytes(b"y" * 1001)
    assert file_digest(f) != before
    g = tmp_path / "v.bin"
    g.write_bytes(b"y" * 1001)
    assert files_digest([f]) != files_digest([g])  # the name is part of a set's hash
