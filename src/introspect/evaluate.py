"""Checkpoint evaluation: do the explanations follow what the model does now (Self) or the fixed labels (Orig)?

For M0 and each checkpoint M_t, on held-out eval pairs:
  1. generate explanations greedily (batched, KV cache, stop at the closing `>>>.`) and parse them;
  2. re-sample B(M_t) on x and x∖C and build E(M_t);
  3. score the explanations against E(M_t) ("Self") and against E(M0) ("Orig") with the same scorer;
  4. Self − Orig with a paired-bootstrap CI, overall and on the items whose label differs between M0 and M_t;
  5. drift from M0 and label–behaviour agreement.
Results are cached per (checkpoint hash, eval-set hash): a re-run skips finished checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import behavior, metrics
from .behavior import _left_pad, encode
from .config import atomic_path, stable_hash
from .models import Loaded, render_prompt
from .tasks import Pair, Task

STOP = ">>>."


@torch.no_grad()
def generate(model: Any, tok: Any, prompts: Sequence[list[dict[str, str]]], *, batch_size: int = 16,
             max_new_tokens: int = 40, progress: bool = False) -> list[str]:
    """Greedy continuations of chat prompts, batched by length, stopping at `>>>.` or end of turn."""
    ids = [encode(tok, render_prompt(tok, list(m))) for m in prompts]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out: list[str] = [""] * len(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16), tqdm(total=len(ids), disable=not progress, desc="explain") as bar:
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x, mask = _left_pad([ids[j] for j in idx], tok.pad_token_id)
            gen = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, stop_strings=[STOP],
                                 tokenizer=tok)
            for j, row in zip(idx, gen[:, x.shape[1]:]):
                text = tok.decode(row, skip_special_tokens=True)
                out[j] = text[: text.index(STOP) + len(STOP)] if STOP in text else text
            bar.update(len(idx))
    return out


def explanation_prompts(task: Task, pairs: Sequence[Pair]) -> list[list[dict[str, str]]]:
    return [task.explanation_messages(p) for p in pairs]


def label_frame(beh: pd.DataFrame) -> pd.DataFrame:
    """The structured labels E(M) of a BehaviorTable: (changed, letter = answer without C)."""
    return pd.DataFrame({"pair_id": beh["pair_id"], "changed": beh["changed"], "letter": beh["answer_without"]})


def checkpoint_hash(path: Path | None, base_hash: str) -> str:
    """Content hash of a checkpoint's weights files (or of M0 itself)."""
    if path is None:
        return base_hash
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(path.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def compare(texts: Sequence[str], beh: pd.DataFrame, m0_beh: pd.DataFrame, choices: Sequence[str], *,
            seed: int, n_boot: int, orig_beh: pd.DataFrame | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score explanations against E(M_t) (Self, from `beh`) and the fixed labels (Orig), same items, same resamples.

    Orig is E(M0) from `m0_beh`, or E(label model) from `orig_beh` when the training labels came from another
    model (cross-family). Drift is always measured against M0's own behaviour.
    """
    e_self, e_orig = label_frame(beh), label_frame(m0_beh if orig_beh is None else orig_beh)
    self_items = metrics.items(texts, e_self["changed"], e_self["letter"], choices)
    orig_items = metrics.items(texts, e_orig["changed"], e_orig["letter"], choices)
    differs = ((e_self["changed"].to_numpy() != e_orig["changed"].to_numpy())
               | (e_self["letter"].to_numpy() != e_orig["letter"].to_numpy()))
    drift = ((beh["answer"].to_numpy() != m0_beh["answer"].to_numpy())
             | (beh["answer_without"].to_numpy() != m0_beh["answer_without"].to_numpy()))
    result: dict[str, Any] = {
        "n": len(texts),
        "self": metrics.score(self_items, seed=seed, n_boot=n_boot),
        "orig": metrics.score(orig_items, seed=seed, n_boot=n_boot),
        "self_minus_orig": metrics.paired_difference(self_items, orig_items, seed=seed, n_boot=n_boot),
        "n_label_differs": int(differs.sum()),
        "drift": float(drift.mean()),
        "agreement": float(1 - differs.mean()),  # fixed labels (Orig) vs the labels current behaviour gives E(M_t)
        "behavior_changed_rate": float(beh["changed"].mean()),
        "strata": {
            f"{name}_{'changed' if cls else 'unchanged'}": {
                "n": int((it.gold_changed == cls).sum()),
                "exact_match": metrics.point(it, np.flatnonzero(it.gold_changed == cls))["exact_match"],
            }
            for name, it in (("self", self_items), ("orig", orig_items)) for cls in (True, False)
        },
    }
    if differs.any():
        sub = lambda it: metrics.Items(*(a[differs] for a in (it.ok, it.pred_changed, it.pred_letter, it.gold_changed, it.gold_letter)))  # noqa: E731
        result["self_minus_orig_on_differing"] = metrics.paired_difference(sub(self_items), sub(orig_items), seed=seed, n_boot=n_boot)
    per_item = pd.DataFrame({"pair_id": beh["pair_id"].tolist(), "text": list(texts),
                             "parsed_ok": self_items.ok, "pred_changed": self_items.pred_changed,
                             "pred_letter": self_items.pred_letter.astype(str), "self_changed": e_self["changed"].to_numpy(),
                             "self_letter": e_self["letter"].to_numpy(), "orig_changed": e_orig["changed"].to_numpy(),
                             "orig_letter": e_orig["letter"].to_numpy(), "label_differs": differs,
                             "answer": beh["answer"].to_numpy(), "answer_without": beh["answer_without"].to_numpy()})
    return result, per_item


def evaluate_one(model: Any, tok: Any, task: Task, pairs: Sequence[Pair], m0_beh: pd.DataFrame, *, seed: int,
                 n_boot: int, batch_size: int = 16, max_new_tokens: int = 40,
                 beh: pd.DataFrame | None = None, orig_beh: pd.DataFrame | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Generate explanations, re-sample B(M_t) (unless `beh` is given: M0's is already known), and compare."""
    t0 = time.time()
    texts = generate(model, tok, explanation_prompts(task, pairs), batch_size=batch_size,
                     max_new_tokens=max_new_tokens, progress=True)
    if beh is None:
        beh, _ = behavior.sample_behavior(model, tok, task, pairs, progress=True)
    result, per_item = compare(texts, beh, m0_beh, task.choices, seed=seed, n_boot=n_boot, orig_beh=orig_beh)
    result["seconds"] = round(time.time() - t0, 1)
    return result, per_item


def load_checkpoint_model(base: Loaded, path: Path, finetune: str) -> Any:
    """M0 with a checkpoint's weights: a LoRA adapter on top of the base model, or a full model directory."""
    if finetune == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(base.model, path).eval()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def cached_result(path: Path, key: dict[str, str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("key") == key else None


def save_result(path: Path, result: dict[str, Any], per_item: pd.DataFrame) -> None:
    behavior.write_table(path.with_name("items.parquet"), per_item, {"key": result["key"]})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


def eval_set_hash(pairs: Sequence[Pair], e_m0: pd.DataFrame) -> str:
    return stable_hash([[p.to_dict() for p in pairs], e_m0.to_dict("list")])
