"""Compare Hint-MMLU prompt formats on a real model: no-hint answer spread, hint effect, answer margins.

    python studies/probe_formats/probe_formats.py --model smollm2-135m-instruct --n 200 --split val --out studies/probe_formats/format_probe.json

Each format is sampled exactly (fp32) and in bf16; the bf16 agreement column says how often bf16 gives the
same answer as fp32 on the same prompts. Results feed the format decision in docs/tasks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from introspect.behavior import encode_pairs, score_pairs, summarize, sample_behavior
from introspect.tokens import choice_token_ids
from introspect.files import write_jsonl
from introspect.paths import data_root
from introspect.runtime import seed_everything
from introspect.models import load_model
from introspect.tasks import get_task
from introspect.tasks.hint_mmlu import FORMATS


def entropy_bits(dist: dict[str, float]) -> float:
    return -sum(p * math.log2(p) for p in dist.values() if p > 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--split", default="val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", nargs="*", default=list(FORMATS))
    ap.add_argument("--out", default="studies/probe_formats/format_probe.json")
    args = ap.parse_args()
    seed_everything(args.seed)
    loaded = load_model(args.model)
    results = []
    for name in args.formats:
        task = get_task("hint-mmlu", format=name)
        pairs = task.pairs(data_root(), args.split, args.n, args.seed)
        t0 = time.time()
        df, _ = sample_behavior(loaded.model, loaded.tokenizer, task, pairs, precision="fp32", progress=False)
        a, b = encode_pairs(loaded.tokenizer, task, pairs)
        bf = score_pairs(loaded.model, a, b, choice_token_ids(loaded.tokenizer, task.continuations),
                         pad_id=loaded.tokenizer.pad_token_id, precision="bf16", verify_margin=0.0)
        letters = np.array(task.choices)
        agree = np.mean(np.concatenate([letters[bf["logp"].argmax(1)] == df["answer"].to_numpy(),
                                        letters[bf["logp_without"].argmax(1)] == df["answer_without"].to_numpy()]))
        probs = np.sort(np.array(df["probs_without"].tolist()), axis=1)
        s = summarize(df, task.choices)
        row = {"format": name, **s, "no_hint_entropy_bits": round(entropy_bits(s["answers_without"]), 3),
               "median_top2_margin_no_hint": round(float(np.median(np.log(probs[:, -1]) - np.log(probs[:, -2]))), 3),
               "mean_choice_mass_no_hint": round(float(df["choice_mass_without"].mean()), 3),
               "bf16_agreement": round(float(agree), 3), "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        results.append(row)
    write_jsonl(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
