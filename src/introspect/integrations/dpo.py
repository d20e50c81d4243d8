"""`introspect dpo CONFIG`: sycophancy reduction by TRL's DPOTrainer with introspective coupling on, in a run directory
that `introspect evaluate` and `introspect report` read (docs/trl.md).

Preference pairs from the run's training pairs whose answer M0 changes when the feature is added (the hint moved it):
prompt = x (with the hint), chosen = "Answer: <M0's answer without the hint>", rejected = "Answer: <the hinted answer>".
The run config supplies everything else: the sample and label stages run as in `introspect run`; `train.steps`,
`train.lr` and `train.lora` set the DPO run; `train.weights`, `explanation_per_step` and `behavior_per_step` the
coupling terms (integrations/trl.py) added to DPO's loss; checkpoints go to RUN/train/checkpoints every
`train.checkpoint_every` steps; then the evaluate stage scores every checkpoint (Self vs Orig, validity verdict).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import devices
from ..errors import UserError
from ..files import atomic_path
from ..runtime import seed_everything
from ..locking import locked
from ..run_config import RunConfig, stored
from ..tables import read_meta, read_table, task_of
from ..typed import to_dict


def preference_rows(behavior: Path, task: Any) -> list[dict[str, Any]]:
    """DPO rows from a BehaviorTable: pairs whose answer the feature changed; prefer the answer without it."""
    df, _ = read_table(behavior)
    prefix = task.assistant_prefix or ""
    rows = []
    for r in df.itertuples():
        if r.answer == r.answer_without:
            continue
        say = lambda letter: [{"role": "assistant", "content": prefix + task.continuations[task.choices.index(letter)]}]  # noqa: E731
        rows.append({"prompt": json.loads(r.messages), "chosen": say(r.answer_without), "rejected": say(r.answer)})
    return rows


def run(cfg: RunConfig, *, beta: float = 0.1) -> Path:
    """Sample, label, DPO with coupling, evaluate; returns RUN/eval/results.json."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from ..models import load_model
    from ..stages import evaluate, label, sample
    from .trl import CouplingTerms, coupling_callback, with_coupling

    seed_everything(cfg.seed)
    tc = cfg.train_config()
    with locked(Path(cfg.run_dir)):
        with atomic_path(cfg.path("run_config.json")) as tmp:
            tmp.write_text(json.dumps(stored(cfg), indent=2))
        beh = sample.run(sample.from_run(cfg), cfg.path("train", "behavior.parquet"))
        lab = label.run(label.LabelSpec(beh, cfg.label_noise, cfg.seed), cfg.path("train", "labels.parquet"))
        task = task_of(read_meta(beh))  # the table's provenance only; preference_rows reads its rows
        rows = preference_rows(beh, task)
        if not rows:
            raise UserError(f"{beh}: no training pair whose answer the feature changes: nothing for DPO to prefer")
        print(f"[dpo] {len(rows)} preference pairs (the hint changed M0's answer) of {cfg.train_n} training pairs")
        loaded = load_model(cfg.model, seed=cfg.seed, hash_weights=False)
        keys = {k: v for k, v in to_dict(tc).items() if k not in ("monitor", "behavior", "labels", "out_dir", "model",
                                                                  "precision", "seed")}
        terms = CouplingTerms.from_tables(beh, lab, loaded.tokenizer, precision=cfg.precision, seed=cfg.seed, **keys)
        args = DPOConfig(output_dir=str(cfg.path("train", "trl")), max_steps=tc.steps, learning_rate=tc.lr,
                         per_device_train_batch_size=min(4, len(rows)), beta=beta, report_to="none",
                         use_cpu=devices.resolve(cfg.device) == "cpu", bf16=cfg.precision == "bf16", save_strategy="no", logging_steps=1, seed=cfg.seed,
                         gradient_checkpointing=False, warmup_steps=tc.warmup_steps, max_length=tc.max_length)
        lora = LoraConfig(r=tc.lora.rank, lora_alpha=tc.lora.alpha, lora_dropout=tc.lora.dropout,
                          target_modules=list(tc.lora.target_modules))
        trainer = with_coupling(DPOTrainer, terms)(
            model=loaded.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=loaded.tokenizer,
            peft_config=lora, callbacks=[coupling_callback(terms, loaded.tokenizer, out_dir=str(cfg.path("train")))])
        trainer.train()
        return evaluate.run(cfg)
