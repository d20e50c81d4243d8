"""Step-0 regulariser check on SmolLM2 (docs/training.md): at step 0 the LoRA model *is* M0, so the KL the trainer
computes against M0's BehaviorTable should be ~0 and the argmax should agree with the table.

    python studies/regulariser_step0/regulariser_step0.py --n 48

Samples a BehaviorTable as a run does (`--table-precision`, default bf16: bf16 body, fp32 head, near-tie re-check
in fp32), then computes the training step's choice log-probs for the same pairs (explanation, x and x∖C packed as
one tree; body under bf16 autocast or, with `--train-precision fp32`, in fp32) two ways: with the fp32 head at the
answer positions (the trainer now) and, under bf16, also with the bf16 head of the model's own forward (the trainer
before; in fp32 the two heads are the same, so that second forward is skipped). Prints KL(table ‖ train) and argmax
agreement for each.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


from introspect import behavior, devices, labels, selection, tree
from introspect.files import atomic_path
from introspect.paths import data_root
from introspect.runtime import seed_everything
from introspect.models import load_model
from introspect.tasks import get_task
from introspect.train import TrainConfig
from introspect.train import step as S
from introspect.train import trainer as T
from introspect import tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--format", default="paren")
    ap.add_argument("--hint", default=None, help="the hint-mmlu task's hint option (the claims setting: expert)")
    ap.add_argument("--verify-margin", type=float, default=0.015, help="the table's fp32 near-tie re-check (run default)")
    ap.add_argument("--min-margin", type=float, default=0.0,
                    help="keep only pairs with this table margin on both sides, half changed (the claims arms' selection: 0.25)")
    ap.add_argument("--pool", type=int, default=400, help="pairs sampled to select --n from when --min-margin > 0")
    ap.add_argument("--table-precision", choices=("bf16", "fp32"), default="bf16",
                    help="precision the BehaviorTable is sampled in (a run's `precision`)")
    ap.add_argument("--train-precision", choices=("bf16", "fp32"), default="bf16",
                    help="precision of the training step's body (a run's `precision`; fp32: no autocast)")
    ap.add_argument("--out", default="studies/regulariser_step0/regulariser_step0.json")
    args = ap.parse_args()
    seed_everything(0)
    loaded = load_model("smollm2-135m-instruct", hash_weights=False)
    options = {"format": args.format, **({"hint": args.hint} if args.hint else {})}
    tok, task = loaded.tokenizer, get_task("hint-mmlu", **options)
    pairs = task.pairs(data_root(), "val", args.pool if args.min_margin > 0 else args.n, 0)
    df, _ = behavior.sample_behavior(loaded.model, tok, task, pairs, precision=args.table_precision,
                                     verify_margin=args.verify_margin, progress=False)
    if args.min_margin > 0:  # as a run's selection keeps its training pairs (selection.select)
        df = selection.select(df, n=args.n, min_margin=args.min_margin, balance=True, seed=0, where="--min-margin")
        by_id = {p.id: p for p in pairs}
        pairs = [by_id[i] for i in df["pair_id"]]
    table = np.stack([np.array(df["probs"].tolist()), np.array(df["probs_without"].tolist())], 1).reshape(-1, 4)
    expl = S.encode_explanations(tok, labels.make_labels(df, task), 2048, "step0")
    a, b = behavior.encode_pairs(tok, task, pairs)
    cids = tokens.choice_token_ids(tok, task.continuations)
    model = T.wrap(loaded.model, TrainConfig(behavior="-", labels="-", out_dir="-"))  # LoRA B = 0: the model is M0
    top2 = np.sort(np.log(table), axis=1)[:, -2:]  # each prompt's two likeliest choices in the table
    out = {"n_pairs": args.n, "format": args.format, "hint": args.hint, "min_margin": args.min_margin, "verify_margin": args.verify_margin,
           "table_precision": args.table_precision, "train_precision": args.train_precision,
           "table_margin_median": float(np.median(top2[:, 1] - top2[:, 0]))}
    old_head = args.train_precision == "bf16"  # the model's own head differs from the fp32 one only under autocast
    fp32_rows, bf16_rows = [], []
    with torch.no_grad(), devices.autocast(args.train_precision):
        for i in range(0, args.n, 2):
            groups = [[S.explanation_item(expl[j]), (a[j], 0), (b[j], 0)] for j in range(i, min(i + 2, args.n))]
            fp32_rows.append(S.tree_terms(model, groups, cids, tok.pad_token_id)[2].float().numpy())
            if not old_head:
                continue
            batch = tree.pack([[s for s, _ in g] for g in groups], tok.pad_token_id)
            cols = [[p[-1] for (s, n), p in zip(g, ps) if not n] for g, ps in zip(groups, batch.paths)]
            logits, _ = tree.forward(model, batch, cols)  # the model's own (bf16) head: the old trainer
            bf16_rows.append(torch.log_softmax(tokens.group_logits(torch.cat(logits).float(), cids), -1).numpy())
    for name, rows in [("fp32_head", fp32_rows)] + ([("bf16_head", bf16_rows)] if old_head else []):
        logp = np.concatenate(rows)
        kl = float(np.mean(np.sum(table * (np.log(np.clip(table, 1e-12, None)) - logp), axis=1)))
        agree = float(np.mean(logp.argmax(1) == table.argmax(1)))
        out[name + "_disagreeing_margins"] = [round(float(m), 4) for m in (top2[:, 1] - top2[:, 0])[logp.argmax(1) != table.argmax(1)]]
        out[name] = {"kl_table_to_train": kl, "argmax_agreement": agree,
                     "max_abs_dlogp": float(np.abs(logp - np.log(np.clip(table, 1e-12, None))).max())}
        print(f"{name}: KL(table ‖ train) {kl:.2e}, argmax agreement {agree:.1%} over {2 * args.n} prompts, "
              f"max |Δ log p| {out[name]['max_abs_dlogp']:.4f}")
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
