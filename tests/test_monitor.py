"""The coupling monitor: its decision rule, each policy carried out by the trainer (warn, stop, rollback, adapt) with
the record it leaves, and the monitor firing on real drift of the tiny model (and not without drift)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from introspect import behavior, labels
from introspect import tables as tbl
from introspect.models import Loaded
from introspect.tasks import get_task
from introspect.train import LossWeights, MonitorSpec, TrainConfig
from introspect.train import monitor as M
from introspect.train import trainer as T


@pytest.fixture(scope="module")
def tables(tiny: Loaded, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("monitor")
    task = get_task("hint-mmlu")
    for split, name in (("val", "behavior"), ("dev", "monitor")):
        pairs = task.pairs(data_dir, split, 8, seed=0)
        df, _ = behavior.sample_behavior(tiny.model, tiny.tokenizer, task, pairs, precision="fp32", progress=False)
        meta = tbl.table_meta(model_id="tiny-random", weights_hash=tiny.weights_hash, task=task, pairs=pairs, seed=0,
                              split=split, precision="fp32", verify_margin=0.0)
        tbl.write_table(out / f"{name}.parquet", df, meta)
        if name == "behavior":
            tbl.write_table(out / "labels.parquet", labels.make_labels(df, task), meta)
    return {k: str(out / f"{k}.parquet") for k in ("behavior", "labels", "monitor")}


def _cfg(tables: dict[str, str], out: Path, policy: str, lr: float = 1e-3, **monitor) -> TrainConfig:
    return TrainConfig(behavior=tables["behavior"], labels=tables["labels"], out_dir=str(out), model="tiny-random", steps=8,
                       lr=lr, warmup_steps=0, schedule="constant", checkpoint_every=2, probe_every=0, precision="fp32",
                       weights=LossWeights(explanation=1.0, behavior_kl=0.0),
                       monitor=MonitorSpec(**{"every": 2, "pairs": tables["monitor"], "n": 8, "policy": policy,
                                              "min_agreement": 0.7, "max_new_tokens": 6, **monitor}))


def _scripted(monkeypatch: pytest.MonkeyPatch, agreements: list[float]) -> None:
    """Measurements in order of the checks: the constructed drift (agreement falls below 0.7 where the list says)."""
    seq = iter(agreements)

    def fake(*args, **kwargs):
        a = next(seq)
        return {"self_em": 0.5, "orig_em": 0.5, "self_minus_orig": 0.0, "has_changed_f1": 0.5, "pred_changed_rate": 0.5,
                "agreement": a, "drift": 1 - a, "kl_to_m0": 0.1 * (1 - a)}

    monkeypatch.setattr(M, "measure", fake)


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))


def test_decide_rules() -> None:
    spec = MonitorSpec(every=1, pairs="x", min_agreement=0.7, max_rollbacks=2, stall_checks=2, stall_tol=0.05)
    low, high = {"agreement": 0.5}, {"agreement": 0.9}
    assert M.decide(spec, low, [], 1.0, 0).action == "warn" and M.decide(spec, high, [], 1.0, 0).action == "ok"
    stop = MonitorSpec(**{**vars(spec), "policy": "stop"})
    assert M.decide(stop, low, [], 1.0, 0).action == "stop" and M.decide(stop, high, [], 1.0, 0).action == "ok"
    rb = MonitorSpec(**{**vars(spec), "policy": "rollback"})
    d = M.decide(rb, low, [], 0.0, 0)
    assert (d.action, d.lam, d.lr_scale) == ("rollback", 0.2, 0.5)  # from λ = 0: the floor 0.1, doubled
    assert M.decide(rb, low, [], 1.0, 2).action == "stop"  # max_rollbacks reached
    ad = MonitorSpec(**{**vars(spec), "policy": "adapt"})
    assert M.decide(ad, low, [1.0], 1.0, 0).action == "raise_lambda" and M.decide(ad, low, [1.0], 1.0, 0).lam == 2.0
    assert M.decide(ad, high, [1.0, 0.9, 0.99], 1.0, 0).action == "lower_lambda"  # 1.0 -> 0.99 over 2 checks: stalled
    assert M.decide(ad, high, [1.0, 0.9, 0.5], 1.0, 0).action == "ok"


@pytest.mark.slow
def test_warn_fires_on_real_drift_and_not_without(tables, tmp_path: Path) -> None:
    T.train(_cfg(tables, tmp_path / "drift", "warn", lr=5e-2, min_agreement=0.99))
    T.train(_cfg(tables, tmp_path / "still", "warn", lr=1e-7, min_agreement=0.99))
    drift = [r for r in _rows(tmp_path / "drift") if "monitor" in r]
    still = [r for r in _rows(tmp_path / "still") if "monitor" in r]
    assert [r["step"] for r in drift] == [2, 4, 6, 8]
    assert all(r["monitor_decision"]["action"] == "warn" and r["monitor"]["agreement"] < 0.99 for r in drift)
    assert all(r["monitor_decision"]["action"] == "ok" and r["monitor"]["agreement"] == 1.0 for r in still)
    assert set(drift[0]["monitor"]) == {"self_em", "orig_em", "self_minus_orig", "has_changed_f1", "pred_changed_rate",
                                        "agreement", "drift", "kl_to_m0"}
    assert _steps(tmp_path / "drift") == [2, 4, 6, 8]  # warn only records


@pytest.mark.slow
def test_stop_keeps_the_last_checkpoint_that_met_the_condition(tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _scripted(monkeypatch, [0.9, 0.8, 0.4])
    cfg = _cfg(tables, tmp_path, "stop")
    T.train(cfg)
    assert _steps(tmp_path) == [2, 4]  # step 6 broke the condition: the run ended, 4 is the last good one
    stop = json.loads((tmp_path / "monitor_stop.json").read_text())
    assert stop["step"] == 6 and stop["kept"] == 4 and "agreement 0.40 < min_agreement 0.70" in stop["why"]
    rows = _rows(tmp_path)
    assert rows[-1]["step"] == 6 and rows[-1]["monitor_decision"]["action"] == "stop"
    assert "[monitor] stopped at step 6" in capsys.readouterr().out
    T.train(cfg, resume=True)  # a stopped run stays stopped
    assert "the coupling monitor stopped this run" in capsys.readouterr().out and _steps(tmp_path) == [2, 4]


def test_rollback_restores_and_continues_with_smaller_lr_larger_lambda(tables, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _scripted(monkeypatch, [0.9, 0.3, 0.9, 0.9, 0.9])  # checks at 2, 4 (breach), then 4, 6, 8 after the rollback
    T.train(_cfg(tables, tmp_path, "rollback"))
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 3, 4, 5, 6, 7, 8]
    rb = rows[3]["monitor_decision"]
    assert rb["action"] == "rollback" and rb["lambda"] == pytest.approx(0.2)
    assert rows[4]["lr"] == pytest.approx(rows[2]["lr"] * 0.5)  # lr halved after the rollback to step 2
    assert "behavior_kl" not in rows[2] and "behavior_kl" in rows[4]  # λ went from 0 to 0.2: the KL now trains
    assert _steps(tmp_path) == [2, 4, 6, 8]


def test_adapt_raises_lambda_when_agreement_falls(tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _scripted(monkeypatch, [0.9, 0.5, 0.5, 0.9])
    T.train(_cfg(tables, tmp_path, "adapt"))
    decisions = [r["monitor_decision"] for r in _rows(tmp_path) if "monitor_decision" in r]
    assert [d["action"] for d in decisions][:3] == ["ok", "raise_lambda", "raise_lambda"]
    assert [d["lambda"] for d in decisions][:3] == pytest.approx([0.0, 0.2, 0.4])
    ck = json.loads((tmp_path / "checkpoints" / "step_000008" / "meta.json").read_text())
    assert ck["monitor_state"]["lambda"] == pytest.approx(decisions[-1]["lambda"])  # a resumed run keeps λ


def test_monitor_pairs_must_be_held_out(tables, tmp_path: Path) -> None:
    from introspect.errors import UserError

    cfg = _cfg(tables, tmp_path, "warn")
    cfg.monitor.pairs = tables["behavior"]  # the training pairs themselves
    with pytest.raises(UserError, match="monitor pair\\(s\\) are training pairs"):
        T.train(cfg)


@pytest.mark.slow
def test_run_samples_monitor_pairs_and_reports_decisions(tmp_path: Path) -> None:
    import yaml

    from conftest import DEV, write_mmlu
    from introspect.pipeline import run
    from introspect.run_config import load_run_config

    data = write_mmlu(tmp_path / "data")
    write_mmlu(data, "dev", DEV)
    write_mmlu(data, "test", {"misc": [[f"Test question {i}?", "a", "b", "c", "d", "ABCD"[i % 4]] for i in range(6)]})
    cfg = {"run_dir": str(tmp_path / "run"), "model": "tiny-random", "data_root": str(data), "train_split": "val",
           "train_n": 8, "precision": "fp32", "monitor_split": "dev",
           "train": {"steps": 4, "checkpoint_every": 2, "probe_every": 0, "lr": 5e-2, "weights": {"behavior_kl": 0.0},
                     "monitor": {"every": 2, "n": 6, "policy": "warn", "min_agreement": 0.99, "max_new_tokens": 6}},
           "evaluate": {"split": "test", "n": 6, "n_boot": 20, "max_new_tokens": 6, "baselines": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run(load_run_config(tmp_path / "cfg.yaml"))
    mon, _ = tbl.read_table(tmp_path / "run" / "train" / "monitor_behavior.parquet")
    assert len(mon) == 6 and all(p.startswith("dev/") for p in mon["pair_id"])
    assert (tmp_path / "run" / "figures" / "monitor.png").is_file()
    assert "monitor" in (tmp_path / "run" / "report.html").read_text()
    del cfg["monitor_split"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    from introspect.errors import UserError

    with pytest.raises(UserError, match="needs monitor_split"):
        load_run_config(tmp_path / "bad.yaml")
