"""Self vs Orig on hand-built drift, evaluation caching/resume, the report, and one tiny end-to-end run."""

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from introspect import evaluate, run_config
from introspect.stages import evaluate as evaluate_stage
from introspect.labels import target_text
from introspect.metrics import METRICS

from conftest import write_tiny_run_config


def _beh(answers: list[str], answers_without: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"pair_id": [f"p{i}" for i in range(len(answers))], "answer": answers,
                         "answer_without": answers_without, "changed": [a != b for a, b in zip(answers, answers_without)]})


def test_self_and_orig_on_hand_built_drift() -> None:
    n, drifted = 20, [3, 7, 11, 15]
    m0 = _beh(["B"] * n, ["C"] * 10 + ["B"] * 10)  # changed on the first ten
    now_with, now_without = list(m0["answer"]), list(m0["answer_without"])
    for i in drifted:  # behaviour drifted: the answer without the hint moved to D
        now_without[i] = "D"
    now = _beh(now_with, now_without)
    texts = [target_text(a != b, b) for a, b in zip(now_with, now_without)]  # explanations follow current behaviour
    res, items = evaluate.compare(texts, now, m0, "ABCD", seed=0, n_boot=500)
    assert res["n_label_differs"] == 4 and res["drift"] == pytest.approx(4 / n) and res["agreement"] == pytest.approx(16 / n)
    assert res["self"]["exact_match"]["value"] == 1.0
    assert res["orig"]["exact_match"]["value"] == pytest.approx(16 / n)
    assert res["self_minus_orig"]["exact_match"]["value"] == pytest.approx(4 / n)
    d = res["self_minus_orig_on_differing"]["exact_match"]
    assert d["value"] == 1.0 and d["ci"] == [1.0, 1.0]
    assert list(np.flatnonzero(items["label_differs"])) == drifted
    again, _ = evaluate.compare(texts, now, m0, "ABCD", seed=0, n_boot=500)
    assert again == res  # bootstrap CIs are deterministic by seed
    other, _ = evaluate.compare(texts, now, m0, "ABCD", seed=1, n_boot=500)
    assert other["self_minus_orig"]["exact_match"]["ci"] != res["self_minus_orig"]["exact_match"]["ci"]
    # copying the fixed labels instead would score Orig 1 and Self 16/20
    copy, _ = evaluate.compare([target_text(c, ltr) for c, ltr in zip(m0["changed"], m0["answer_without"])], now, m0, "ABCD", seed=0, n_boot=100)
    assert copy["orig"]["exact_match"]["value"] == 1.0 and copy["self"]["exact_match"]["value"] == pytest.approx(16 / n)
    assert res["strata"]["self_changed"]["n"] + res["strata"]["self_unchanged"]["n"] == n
    # cross-family: Orig = the label model's labels; drift is still measured against M0
    other_model = _beh(["B"] * n, ["A"] * n)  # the label model always changes, to A: no label agrees with E(M_t)
    cross, _ = evaluate.compare(texts, now, m0, "ABCD", seed=0, n_boot=500, orig_beh=other_model)
    assert cross["orig"]["exact_match"]["value"] == 0.0 and cross["self"] == res["self"]
    assert cross["drift"] == res["drift"] and cross["n_label_differs"] == n


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    write_tiny_run_config(root, train={"checkpoint_every": 1},
                          evaluate={"n_boot": 200, "max_new_tokens": 12, "batch_size": 16})
    return root


def test_run_end_to_end_and_report(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from introspect import cli

    assert cli.main(["run", str(tiny_run / "cfg.yaml")]) == 0
    out = capsys.readouterr().out
    run = tiny_run / "run"
    assert "Report:" in out and "Self−Orig" in out
    res = json.loads((run / "eval" / "results.json").read_text())
    assert sorted(int(s) for s in res["checkpoints"]) == [0, 1, 2]
    assert set(res["baselines"]) == {"majority", "copy_orig", "nearest", "zero_shot", "few_shot"}
    assert res["baselines"]["copy_orig"]["orig"]["exact_match"]["value"] == 1.0
    for png in (run / "figures").glob("*.png"):
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        w, h = struct.unpack(">II", head[16:24])
        assert w > 100 and h > 100
    assert {p.name for p in (run / "figures").glob("*.png")} == {"self_vs_orig.png", "drift_agreement.png", "losses.png"}
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "<pre>|" not in html and "| step |" not in html  # tables are HTML, not Markdown in a <pre>
    assert html.count("<table>") >= 8  # verdicts, 5 metrics, drift, baselines, strata, provenance
    assert html.index("class='box verdict") < html.index("How to read this page") < html.index("<img")
    assert "<details><summary>run_config.json, model and data hashes, commit" in html
    assert "weights hash" in html and "docs/metrics.md" in html
    for m in METRICS:
        assert f"<dt>{m}</dt>" in html
    md = (run / "summary.md").read_text()
    for m in METRICS:
        assert f"## {m}" in md
        for step, r in res["checkpoints"].items():
            assert f"| {step} | {r['self'][m]['value']:.3f} [" in md or np.isnan(r["self"][m]["value"])
    # a repeated run skips every stage
    assert cli.main(["run", str(tiny_run / "cfg.yaml")]) == 0
    again = capsys.readouterr().out
    assert "[sample] " in again and "[label] " in again and "last step and current: skip" in again
    assert again.count("is current: skip") == 2 + 3 + 1 + 1  # train tables, 3 checkpoints, eval M0, baselines


def test_evaluate_resumes_without_recomputing(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tiny_run / "run"
    cfg = run_config.config_of_run(run)
    cfg.evaluate.baselines = False
    (run / "eval" / "step_000002" / "result.json").unlink()  # as if killed before the last checkpoint finished
    calls = []
    real = evaluate.evaluate_one

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_stage, "evaluate_one", counting)
    res = json.loads(evaluate_stage.run(cfg).read_text())
    assert len(calls) == 1 and sorted(res["checkpoints"]) == ["0", "1", "2"]


def test_run_config_errors(tmp_path: Path) -> None:
    from introspect.errors import UserError

    bad = tmp_path / "c.yaml"
    bad.write_text("run_dir: x\nmodle: y\n")
    with pytest.raises(UserError, match="unknown config key modle"):
        run_config.load_run_config(bad)
    bad.write_text("run_dir: x\ntrain: {stpes: 3}\n")
    with pytest.raises(UserError, match="stpes"):
        run_config.load_run_config(bad)
    bad.write_text("run_dir: x\ntrain: {out_dir: y}\n")
    with pytest.raises(UserError, match="train.out_dir"):
        run_config.load_run_config(bad)
    bad.write_text("run_dir: [x\n")
    with pytest.raises(UserError, match=r"c\.yaml:\d+: invalid YAML"):
        run_config.load_run_config(bad)


@pytest.mark.slow
def test_report_in_a_real_browser(tiny_run: Path, tmp_path: Path) -> None:
    """Chromium (Debian's package, via Selenium) opens the report: no broken image, no empty section, the verdict box
    on the first screen; and it does flag a broken image. Skipped where Chromium is not installed."""
    import importlib.util
    import shutil
    import sys

    if not (shutil.which("chromium") and shutil.which("chromedriver") and importlib.util.find_spec("selenium")):
        pytest.skip("needs `apt-get install chromium chromium-driver` and `pip install selenium`")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import check_report

    run = tiny_run / "run"
    if not (run / "report.html").is_file():
        from introspect import cli

        assert cli.main(["run", str(tiny_run / "cfg.yaml")]) == 0
    shot = tmp_path / "shot.png"
    found = check_report.check(run / "report.html", shot)
    assert found["problems"] == [] and found["images"] == 3 and found["tables"] >= 8
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    broken = tmp_path / "broken.html"
    html = (run / "report.html").read_text()
    broken.write_text(html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
                      .replace("<p class='note'>Full definitions", "</dl></section><section><h2>Empty</h2></section><p>", 1))
    problems = check_report.check(broken)["problems"]
    assert any(p.startswith("broken image") for p in problems) and "empty section: Empty" in problems
    legendless = tmp_path / "legendless.html"
    legendless.write_text(html.replace('data-legend="1"', 'data-legend="0"', 1)
                          .replace('data-overlaps=""', 'data-overlaps="&#x27;a&#x27; / &#x27;b&#x27;"', 1))
    problems = check_report.check(legendless)["problems"]
    assert any(p.startswith("figure without a legend") for p in problems)
    assert any(p.startswith("overlapping labels in") for p in problems)
