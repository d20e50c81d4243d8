"""Users' own data files for refusal, AITA and Hint-MMLU, and `introspect score` on outside gold/predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SUBJECTS, write_mmlu
from introspect import cli
from introspect.errors import UserError
from introspect.labels import target_text
from introspect.tables import read_table
from introspect.tasks import get_task


def test_refusal_csv_runs_through_sample_with_provenance(data_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "my_requests.csv"
    f.write_text("id,request,label\n" + "".join(f"r{i},Please help me with task {i},{'harmful' if i % 2 else 'benign'}\n"
                                                for i in range(6)))
    out = tmp_path / "b.parquet"
    assert cli.main(["sample", "--model", "tiny-random", "--task", "refusal", "--split", "all", "--n", "4",
                     "--task-option", f"file={f}", "--data-root", str(data_dir), "--precision", "fp32",
                     "--out", str(out)]) == 0
    df, meta = read_table(out)
    assert all(i.startswith("my_requests/r") for i in df["pair_id"])  # ids carry the source
    assert str(f) in meta["sources"] and len(meta["sources"][str(f)]) == 16
    assert meta["task_options"]["file"] == str(f)


def test_aita_jsonl_with_own_column_names(data_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "posts.jsonl"
    f.write_text("".join(json.dumps({"post_id": i, "body": f"I borrowed my sister's car without asking, time {i}. " * 2,
                                     "label": "YTA" if i % 2 else "NTA"}) + "\n" for i in range(4)))
    out = tmp_path / "a.parquet"
    assert cli.main(["sample", "--model", "tiny-random", "--task", "aita", "--split", "multiclass", "--n", "6",
                     "--task-option", f"file={f}", "--task-option", "file_columns={id: post_id, text: body, verdict: label}",
                     "--data-root", str(data_dir), "--precision", "fp32", "--out", str(out)]) == 0
    df, meta = read_table(out)
    assert len(df) == 6 and all(i.startswith("posts/") for i in df["pair_id"]) and str(f) in meta["sources"]
    task = get_task("aita", file=str(f), file_columns={"id": "post_id", "text": "missing", "verdict": "label"})
    with pytest.raises(UserError, match=r"posts.jsonl:1: missing value for column 'missing'"):
        task.pairs(data_dir, "multiclass", 2, 0)


def test_mmlu_folder_of_its_own_and_bad_encoding(data_dir: Path, tmp_path: Path) -> None:
    mine = write_mmlu(tmp_path / "mine", "val", SUBJECTS) / "mmlu"
    pairs = get_task("hint-mmlu", data_dir=str(mine)).pairs(data_dir, "val", 3, 0)
    assert all(p.id.startswith("mmlu:val/") for p in pairs)
    (mine / "val" / "bad_val.csv").write_bytes(b"Caf\xe9?,a,b,c,d,A\n")
    with pytest.raises(UserError, match="bad_val.csv: not UTF-8"):
        get_task("hint-mmlu", data_dir=str(mine)).pairs(data_dir, "val", 3, 0)


def _gold(tmp_path: Path, rows: list[dict]) -> Path:
    g = tmp_path / "gold.jsonl"
    g.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return g


def test_score_outside_gold_and_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = [{"pair_id": f"q{i}", "changed": i % 2 == 0, "letter": "ABCD"[i % 4]} for i in range(8)]
    pred = tmp_path / "pred.jsonl"
    texts = [target_text(r["changed"], r["letter"]) for r in gold]
    texts[1] = "<<<Answer: B>>>"  # right letter, no verdict: counted only by the lenient (ancestor's) content match
    pred.write_text("".join(json.dumps({"pair_id": r["pair_id"], "text": t}) + "\n" for r, t in zip(gold, texts)))
    g = _gold(tmp_path, gold)
    assert cli.main(["score", "--gold", str(g), "--pred", str(pred), "--json"]) == 0
    strict = json.loads(capsys.readouterr().out)
    assert strict["exact_match"]["value"] == 7 / 8 and strict["content_match"]["value"] == 7 / 8
    assert cli.main(["score", "--gold", str(g), "--pred", str(pred), "--json", "--lenient-content"]) == 0
    assert json.loads(capsys.readouterr().out)["content_match"]["value"] == 1.0
    csv_gold = tmp_path / "gold.csv"
    csv_gold.write_text("pair_id,changed,letter\n" + "".join(f"{r['pair_id']},{r['changed']},{r['letter']}\n" for r in gold))
    assert cli.main(["score", "--gold", str(csv_gold), "--pred", str(pred), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact_match"]["value"] == 7 / 8


@pytest.mark.parametrize("rows, message", [
    ([{"pair_id": "a", "changed": True, "letter": "A"}, {"pair_id": "a", "changed": False, "letter": "B"}],
     "gold.jsonl:2: pair_id 'a' repeats line 1"),
    ([{"pair_id": "a", "changed": True}], "gold.jsonl:1: missing field 'letter'"),
    ([{"pair_id": 7, "changed": True, "letter": "A"}], "gold.jsonl:1: pair_id must be a string"),
])
def test_score_bad_gold_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], rows, message) -> None:
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"pair_id": "a", "text": "x"}) + "\n")
    assert cli.main(["score", "--gold", str(_gold(tmp_path, rows)), "--pred", str(pred)]) == 2
    assert message in capsys.readouterr().err


def test_duplicated_prediction_ids_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = _gold(tmp_path, [{"pair_id": "a", "changed": True, "letter": "A"}])
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"pair_id": "a", "text": "x"}\n{"pair_id": "a", "text": "y"}\n')
    assert cli.main(["score", "--gold", str(g), "--pred", str(pred)]) == 2
    assert "pred.jsonl:2: pair_id 'a' repeats line 1" in capsys.readouterr().err


def test_sample_rejects_zero_pairs_and_unwritable_output(data_dir: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["sample", "--model", "tiny-random", "--n", "0", "--data-root", str(data_dir), "--out", str(tmp_path / "x")]) == 2
    assert "--n must be a positive" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["sample", "--model", "tiny-random", "--n", "2", "--data-root", str(data_dir),
                     "--out", str(blocker / "b.parquet")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_screen_on_the_tiny_model(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "screen"
    assert cli.main(["screen", "--model", "tiny-random", "--n", "8", "--split", "val", "--train-split", "val",
                     "--eval-split", "val", "--data-root", str(data_dir), "--min-margin", "0.0", "--out", str(out)]) == 0
    rep = json.loads((out / "screen.json").read_text())
    assert rep["n"] == 8 and rep["keep_rate"] == 1.0 and rep["testable"] is False  # 9 val rows can never give 200
    assert (out / "screen.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("untestable")


def test_selection_by_margin_and_balance() -> None:
    import numpy as np
    import pandas as pd

    from introspect.selection import pair_margin, select

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        sharp = i % 2 == 0  # even rows: confident on both sides
        p = [0.9, 0.05, 0.03, 0.02] if sharp else [0.3, 0.28, 0.22, 0.2]
        rows.append({"pair_id": f"p{i}", "probs": p, "probs_without": list(rng.permutation(p)), "changed": i % 4 == 0})
    df = pd.DataFrame(rows)
    kept = select(df, n=10, min_margin=1.0, balance=True, seed=0)
    assert len(kept) == 10 and kept["changed"].sum() == 5 and (pair_margin(kept) >= 1.0).all()
    assert list(kept["pair_id"]) == sorted(kept["pair_id"], key=lambda s: int(s[1:]))  # sampled order kept
    with pytest.raises(UserError, match="needs 11 changed and 11 unchanged .* the pool has 10 and 10"):
        select(df, n=22, min_margin=1.0, balance=True)
    with pytest.raises(UserError, match="20 of 40 pool pairs have margin >= 1.0"):
        select(df, n=21, min_margin=1.0)
