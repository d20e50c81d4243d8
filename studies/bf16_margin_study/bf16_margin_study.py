"""How close must two choices be before bf16 may flip them? Chooses defaults.VERIFY_MARGIN.

    python studies/bf16_margin_study/bf16_margin_study.py --n 200 --out studies/bf16_margin_study/bf16_margin_study.json

Scores the same pairs in bf16 and fp32 (shared-prefix path) and reports, per threshold t, how many pairs have a
bf16 top-two margin below t on either side (`score_pairs` re-scores these pairs in fp32) and the per-prompt answer
agreement with fp32 afterwards.
"""

from __future__ import annotations

import argparse

import numpy as np

from introspect.behavior import encode_pairs, score_pairs
from introspect.tokens import choice_token_ids
from introspect.files import write_jsonl
from introspect.paths import data_root
from introspect.models import load_model
from introspect.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--task-format", default="paren")
    ap.add_argument("--out", default="studies/bf16_margin_study/bf16_margin_study.json")
    args = ap.parse_args()
    loaded = load_model("smollm2-135m-instruct", hash_weights=False)
    task = get_task("hint-mmlu", format=args.task_format)
    pairs = task.pairs(data_root(), "val", args.n, 0)
    a, b = encode_pairs(loaded.tokenizer, task, pairs)
    cids = choice_token_ids(loaded.tokenizer, task.continuations)
    kw = dict(pad_id=loaded.tokenizer.pad_token_id, verify_margin=0.0)  # the raw bf16 scores are what is studied
    r16 = score_pairs(loaded.model, a, b, cids, precision="bf16", **kw)
    r32 = score_pairs(loaded.model, a, b, cids, precision="fp32", **kw)
    l16 = np.concatenate([r16["logp"], r16["logp_without"]])
    l32 = np.concatenate([r32["logp"], r32["logp_without"]])
    top2 = np.sort(l16, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    err = np.abs((l16 - l16.max(1, keepdims=True)) - (l32 - l32.max(1, keepdims=True))).max(1)
    rows = []
    n = len(pairs)
    for t in (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1):
        close_pair = (margin[:n] < t) | (margin[n:] < t)
        final = np.where(np.concatenate([close_pair, close_pair]), l32.argmax(1), l16.argmax(1))
        rows.append({"threshold": t, "pairs_rescored": int(close_pair.sum()), "share_rescored": round(float(close_pair.mean()), 3),
                     "agreement_with_fp32": round(float((final == l32.argmax(1)).mean()), 4)})
        print(rows[-1])
    summary = {"format": args.task_format, "n_prompts": len(l16), "median_abs_logp_error": round(float(np.median(err)), 4),
               "p95_abs_logp_error": round(float(np.percentile(err, 95)), 4),
               "flipped_margins_fp32": sorted(round(float(m), 4) for m, f in zip(margin, l16.argmax(1) != l32.argmax(1)) if f),
               "thresholds": rows}
    print(summary)
    write_jsonl(args.out, [summary])


if __name__ == "__main__":
    main()
