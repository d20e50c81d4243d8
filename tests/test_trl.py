"""The TRL integration (integrations/trl.py): its coupling terms are the native trainer's, and a TRL SFTTrainer
trains with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from introspect.runtime import seed_everything
from introspect.integrations.trl import CouplingTerms, with_coupling
from introspect.models import load_model
from introspect.train import TrainConfig, train
from introspect.train.config import validate
from introspect.train.trainer import build_model
from introspect.typed import build

KEYS = dict(weights={"explanation": 1.0, "behavior_kl": 0.5}, explanation_per_step=4, behavior_per_step=4,
            precision="fp32", seed=0, lora={"rank": 8, "alpha": 16}, steps=1, warmup_steps=0, checkpoint_every=1,
            probe_every=0)


@pytest.mark.slow
def test_the_terms_equal_the_native_trainers_first_step(tiny_tables: tuple[Path, Path], tmp_path: Path) -> None:
    beh, lab = tiny_tables
    cfg = validate(build(TrainConfig, {"behavior": str(beh), "labels": str(lab), "out_dir": str(tmp_path / "native"),
                                       "model": "tiny-random", **KEYS}, "test"))
    train(cfg)  # the native trainer: step 1's losses are logged at the weights before the update
    native = json.loads((tmp_path / "native" / "metrics.jsonl").read_text().splitlines()[0])
    seed_everything(cfg.seed)  # the same LoRA initialisation as the native trainer's
    loaded = load_model("tiny-random", seed=cfg.seed, hash_weights=False)
    model = build_model(cfg, loaded, None, lambda message: None)
    terms = CouplingTerms.from_tables(beh, lab, loaded.tokenizer, **KEYS)
    got = {k: float(v.detach()) for k, v in terms.losses(model, 1).items()}
    assert set(got) == {"explanation", "behavior_kl"}
    deltas = {k: abs(v - native[k]) for k, v in got.items()}
    print(f"max |Δ loss| vs the native trainer's step 1: {max(deltas.values()):.2e} ({deltas})")
    assert max(deltas.values()) < 1e-5, (got, native)
    assert got["behavior_kl"] < 1e-4  # step 1 is M0 (LoRA B = 0): the KL to M0's own table is ~0 in fp32


@pytest.mark.slow
def test_an_sft_trainer_trains_with_coupling(tiny_tables: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    beh, lab = tiny_tables
    loaded = load_model("tiny-random", seed=0, hash_weights=False)
    tok = loaded.tokenizer
    terms = CouplingTerms.from_tables(beh, lab, tok, **KEYS)
    data = Dataset.from_dict({"text": [f"Example {i}: the answer is (A)." for i in range(8)]})
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                     report_to="none", use_cpu=True, save_strategy="no", max_length=32, learning_rate=1e-3,
                     bf16=False, seed=0)
    trainer = with_coupling(SFTTrainer, terms)(model=loaded.model, args=args, train_dataset=data,
                                              processing_class=tok,
                                              peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logged = [row for row in trainer.state.log_history if "coupling/explanation" in row]
    assert len(logged) == 2 and all(row["coupling/behavior_kl"] >= 0 for row in logged)
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, "the adapter did not train"


def monitor_table(tiny, data_dir: Path, out: Path) -> Path:
    """M0's behaviour on 4 held-out (dev) pairs: the monitor's pairs."""
    from introspect import behavior
    from introspect import tables as tbl
    from introspect.tasks import get_task

    task = get_task("hint-mmlu")
    pairs = task.pairs(data_dir, "dev", 4, seed=0)
    df, _ = behavior.sample_behavior(tiny.model, tiny.tokenizer, task, pairs, precision="fp32", progress=False)
    meta = tbl.table_meta(model_id="tiny-random", weights_hash=tiny.weights_hash, task=task, pairs=pairs, seed=0,
                          split="dev", precision="fp32", verify_margin=0.0)
    tbl.write_table(out, df, meta)
    return out


def sft_with_callback(tables: tuple[Path, Path], mon_pairs: Path, tmp_path: Path, monitor: dict, steps: int = 2):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from introspect.integrations.trl import coupling_callback

    beh, lab = tables
    loaded = load_model("tiny-random", seed=0, hash_weights=False)
    terms = CouplingTerms.from_tables(beh, lab, loaded.tokenizer,
                                      **{**KEYS, "monitor": {"every": 1, "n": 4, "pairs": str(mon_pairs), **monitor}})
    callback = coupling_callback(terms, loaded.tokenizer, out_dir=str(tmp_path / "out"), say=lambda message: None)
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=steps, per_device_train_batch_size=2, report_to="none",
                     use_cpu=True, save_strategy="no", max_length=32, learning_rate=1e-3, bf16=False, seed=0,
                     logging_steps=1, gradient_checkpointing=False)
    trainer = with_coupling(SFTTrainer, terms)(
        model=loaded.model, args=args, processing_class=loaded.tokenizer, callbacks=[callback],
        train_dataset=Dataset.from_dict({"text": [f"Example {i}: the answer is (A)." for i in range(8)]}),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    return trainer, callback, terms, before


@pytest.mark.slow
def test_the_callbacks_policies_fire_on_a_violated_condition(tiny, tiny_tables, data_dir: Path, tmp_path: Path) -> None:
    """An unreachable agreement bar (1.5) is a violated condition at every check: stop ends training at the first
    check and restores M0's adapter; rollback raises λ and then stops after max_rollbacks; a bar of 0 never fires."""
    pytest.importorskip("trl")
    mon = monitor_table(tiny, data_dir, tmp_path / "monitor.parquet")
    trainer, cb, _, before = sft_with_callback(tiny_tables, mon, tmp_path / "stop",
                                               {"policy": "stop", "min_agreement": 1.5}, steps=3)
    assert [d["action"] for d in cb.decisions] == ["stop"] and trainer.state.global_step == 1
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)

    trainer, cb, terms, _ = sft_with_callback(tiny_tables, mon, tmp_path / "rollback",
                                              {"policy": "rollback", "min_agreement": 1.5, "max_rollbacks": 1}, steps=3)
    assert [d["action"] for d in cb.decisions] == ["rollback", "stop"]
    assert terms.weights.behavior_kl == pytest.approx(1.0)  # max(λ 0.5, floor 0.1) x lambda_factor 2

    trainer, cb, _, before = sft_with_callback(tiny_tables, mon, tmp_path / "warn", {"policy": "warn", "min_agreement": 0.0})
    assert [d["action"] for d in cb.decisions] == ["ok", "ok"] and trainer.state.global_step == 2
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)
    from introspect.checkpoints import applied, complete, meta

    done = complete(tmp_path / "warn" / "out" / "checkpoints")
    assert [s for s, _ in done] == [1, 2] and meta(done[-1][1])["trainer"] == "trl"
    base = load_model("tiny-random", seed=0)
    with applied(base, done[-1][1], "lora") as model:  # introspect reads the checkpoint (content hashes checked)
        assert type(model).__name__ == "PeftModelForCausalLM" or hasattr(model, "peft_config")


@pytest.mark.slow
def test_dpo_with_coupling_trains_checkpoints_and_is_evaluated(tmp_path: Path, capsys) -> None:
    pytest.importorskip("trl")
    import json

    from conftest import write_tiny_run_config

    from introspect import cli
    from introspect.checkpoints import complete, meta

    cfg = write_tiny_run_config(tmp_path, train={"steps": 2, "checkpoint_every": 1, "lora": {"rank": 8, "alpha": 16}},
                                evaluate={"baselines": False})
    assert cli.main(["dpo", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "preference pairs" in out and "Self−Orig" in out
    done = complete(tmp_path / "run" / "train" / "checkpoints")
    assert [s for s, _ in done] == [1, 2] and meta(done[-1][1])["inputs"]["trainer"] == "trl"
    res = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert sorted(res["checkpoints"], key=int) == ["0", "1", "2"] and "verdict" in res["checkpoints"]["2"]
