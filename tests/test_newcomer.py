"""What a new user meets: task options listed by --help, users' label spellings and empty bodies, progress bars that
end once, the selection line, figures with legends and no overlapping labels, and a switched-back setting that takes
its checkpoints, results and baseline explanations back instead of recomputing them."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from conftest import write_tiny_run_config  # noqa: E402
from introspect import baselines, cli, selection  # noqa: E402
from introspect.stages import evaluate as evaluate_stage  # noqa: E402
from introspect.errors import UserError  # noqa: E402
from introspect.pipeline import run  # noqa: E402
from introspect.progress import Bar  # noqa: E402
from introspect.report_figures import layout_problems  # noqa: E402
from introspect.run_config import load_run_config  # noqa: E402
from introspect.tables import read_table  # noqa: E402


def test_sample_help_lists_the_named_tasks_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--task", "refusal", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("file (default none)", "file_columns (default none)", "sources (default none)", "openings"):
        assert option in out
    assert "undocumented" not in out and "data_dir" not in out  # only refusal's, every one documented
    with pytest.raises(SystemExit):
        cli.main(["screen", "--help"])
    out = capsys.readouterr().out
    assert "hint-mmlu:" in out and "aita:" in out and "data_dir" in out and "verdicts" in out


def test_xstest_safe_unsafe_labels_run_through_sample(data_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "xstest.csv"
    f.write_text("id,prompt,type\n" + "".join(f"x{i},How do I kill process {i}?,{'unsafe' if i % 2 else 'safe'}\n"
                                               for i in range(6)))
    out = tmp_path / "b.parquet"
    assert cli.main(["sample", "--model", "tiny-random", "--task", "refusal", "--split", "all", "--n", "4",
                     "--task-option", f"file={f}", "--task-option", "file_columns={request: prompt, label: type}",
                     "--data-root", str(data_dir), "--precision", "fp32", "--out", str(out)]) == 0
    df, _ = read_table(out)
    harmful = {json.loads(m)["harmful"] for m in df["meta"]}
    assert len(df) == 4 and harmful == {True, False}


def test_aita_file_with_empty_bodies_drops_and_counts_them(data_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "posts.csv"
    body = "My neighbour parks in my spot every day so I left a note on the car. "
    f.write_text("id,text,verdict\n" + "".join(f"p{i},{body * 2},{'YTA' if i % 2 else 'NTA'}\n" for i in range(4))
                 + "e1,,NTA\ne2,  ,YTA\nd1,**,NTA\nm1," + body * 2 + ",ESH\n")
    out = tmp_path / "a.parquet"
    assert cli.main(["sample", "--model", "tiny-random", "--task", "aita", "--split", "all", "--n", "8",
                     "--task-option", f"file={f}", "--data-root", str(data_dir), "--precision", "fp32",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("[aita] dropped 4 of 8 posts: 2 with an empty body, 1 with a body shorter than min_chars=50 (e.g. '**', "
            "a deleted post), 1 with a verdict other than NTA/YTA") in printed
    assert len(read_table(out)[0]) == 8
    with pytest.raises(UserError, match="a file of your own is read with --split all"):
        cli_task = __import__("introspect.tasks", fromlist=["get_task"]).get_task("aita", file=str(f))
        cli_task.pairs(data_dir, "binary", 2, 0)


def test_progress_bar_prints_its_last_line_once() -> None:
    buf = io.StringIO()
    with Bar(total=4, desc="counting", unit="thing", file=buf, mininterval=0) as bar:
        for _ in range(4):
            bar.update(1)
    lines = buf.getvalue().replace("\r", "\n").splitlines()
    assert sum("4/4" in ln for ln in lines) == 1
    assert sum("3/4" in ln for ln in lines) == 1  # intermediate updates still draw


def test_selection_line_says_what_was_kept() -> None:
    df = pd.DataFrame({"changed": [True, False, True, False, True, False],
                       "probs": [[0.9, 0.1, 0, 0]] * 5 + [[0.5, 0.5, 0, 0]],
                       "probs_without": [[0.8, 0.2, 0, 0]] * 6})
    kept = selection.select(df, n=4, min_margin=0.25, balance=True, seed=0)
    assert selection.kept_line(df, kept, min_margin=0.25, balance=True) == (
        "kept 4 of 6 pairs: margin >= 0.25 nats both sides (5 qualify), balanced 2 changed / 2 unchanged")


def test_layout_check_sees_a_missing_legend_and_overlapping_labels() -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a line")
    ax.annotate("first label", (0.5, 0.5))
    ax.annotate("second label", (0.5, 0.5))
    found = layout_problems(fig)
    assert found["legend"] is False and found["overlaps"] == ["'first label' / 'second label'"]
    ax.texts[1].remove()
    ax.legend(loc="lower right")
    assert layout_problems(fig) == {"legend": True, "overlaps": []}
    plt.close(fig)


def test_screen_refuses_a_bf16_table(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "b.parquet"
    assert cli.main(["sample", "--model", "tiny-random", "--n", "4", "--split", "val", "--data-root", str(data_dir),
                     "--precision", "bf16", "--out", str(table)]) == 0
    assert cli.main(["screen", "--behavior", str(table), "--out", str(tmp_path / "s"), "--data-root", str(data_dir),
                     "--train-split", "val", "--eval-split", "val"]) == 2
    assert "sampled in bf16; screening reads fp32 margins" in capsys.readouterr().err
    assert not (tmp_path / "s" / "screen.json").exists()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("switch")
    run(load_run_config(write_tiny_run_config(root, train={"checkpoint_every": 1})))
    return root


@pytest.mark.slow
def test_switching_a_setting_back_takes_its_outputs_back(small_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "run"
    shutil.copytree(small_run / "run", copy)
    cfg = small_run / "cfg.yaml"
    first = json.loads((copy / "eval" / "results.json").read_text())
    calls = {"train": 0, "evaluate": 0, "baseline texts": 0}
    import introspect.train.trainer as trainer

    for module, name, key in ((trainer, "train", "train"), (evaluate_stage, "evaluate_one", "evaluate"),
                              (baselines, "all_baselines", "baseline texts")):
        real = getattr(module, name)

        def counting(*a, _real=real, _key=key, **k):
            calls[_key] += 1
            return _real(*a, **k)
        monkeypatch.setattr(module, name, counting)
    run(load_run_config(cfg, [f"run_dir={copy}", "train.lr=0.002"]))
    # retrained; step 2's weights differ (step 1's do not: the warm-up's lr is 0 there); baseline texts kept
    assert calls == {"train": 1, "evaluate": 1, "baseline texts": 0}
    assert "moved to" in capsys.readouterr().out
    run(load_run_config(cfg, [f"run_dir={copy}"]))  # back: nothing is trained, evaluated or generated again
    assert calls == {"train": 1, "evaluate": 1, "baseline texts": 0}
    out = capsys.readouterr().out
    assert "took back the checkpoints of this setting" in out and out.count("took back this checkpoint's results") == 1
    again = json.loads((copy / "eval" / "results.json").read_text())
    assert again["checkpoints"]["2"]["self"] == first["checkpoints"]["2"]["self"]


def test_no_collapse_warning_for_an_untrained_m0() -> None:
    from introspect.report import collapse_warnings

    def row(step: int, rate: float) -> dict:
        return {"step": step, "self": {"pred_changed_rate": {"value": rate}}, "label_changed_rate": 0.5}

    warnings = collapse_warnings({"checkpoints": {"0": row(0, float("nan")), "16": row(16, float("nan")),
                                                  "32": row(32, 1.0)}})
    assert len(warnings) == 2 and "nan" not in " ".join(warnings)
    assert warnings[0].startswith("no explanation parses at step 16") and "step 32" in warnings[1]
