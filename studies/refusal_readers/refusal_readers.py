"""Compare the two refusal readers on the same prompts and print their agreement table.

    python studies/refusal_readers/refusal_readers.py --n 100 --out studies/refusal_readers/refusal_readers.json   # 100 pairs = 200 prompts

Reader "logit": refusal vs compliance opening tokens at the first assistant position, once per opening set in
tasks/refusal.py OPENINGS.
Reader "generate": a greedy reply of --max-new-tokens tokens classified by tasks.refusal.refusal_phrase.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from introspect.behavior import sample_behavior
from introspect.files import atomic_path
from introspect.paths import data_root
from introspect.evaluate import generate
from introspect.models import load_model
from introspect.tasks import get_task
from introspect.tasks.refusal import OPENINGS, refusal_phrase


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    loaded = load_model(args.model, hash_weights=False)
    pairs = get_task("refusal").pairs(data_root(), "all", args.n, args.seed)
    texts = generate(loaded.model, loaded.tokenizer, [p.messages for p in pairs] + [p.messages_without for p in pairs],
                     precision="bf16", max_new_tokens=args.max_new_tokens, progress=True)
    gen = np.array([refusal_phrase(t) for t in texts])
    harmful = np.array([p.meta["harmful"] for p in pairs] * 2)
    tables, examples = {}, {}
    for openings in OPENINGS:  # one logit reader per set of opening tokens, each against the same generations
        df, _ = sample_behavior(loaded.model, loaded.tokenizer, get_task("refusal", openings=openings), pairs)
        logit = np.concatenate([df["answer"].to_numpy() == "refuse", df["answer_without"].to_numpy() == "refuse"])
        tables[openings] = reader_table(logit, gen, harmful)
        examples[openings] = [{"prompt_side": "x" if i < len(pairs) else "x∖C", "logit": bool(logit[i]), "generate": bool(gen[i]),
                               "reply": texts[i]} for i in range(len(texts)) if logit[i] != gen[i]][:10]
        print(f"\nlogit reader with openings {openings!r} ({OPENINGS[openings]['refuse']} = refuse) vs generate:")
        print("| prompts | n | agreement | kappa | refuse (logit) | refuse (generate) | both refuse | logit only | generate only | both comply |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, r in tables[openings].items():
            print(f"| {name} | {r['n']} | {r['agreement']:.1%} | {r['kappa']:.2f} | {r['refuse_rate_logit']:.1%} | "
                  f"{r['refuse_rate_generate']:.1%} | {r['both_refuse']} | {r['only_logit']} | {r['only_generate']} | {r['both_comply']} |")
    if args.out:
        with atomic_path(args.out) as tmp, open(tmp, "w") as f:
            json.dump({"n_prompts": len(texts), "max_new_tokens": args.max_new_tokens, "tables": tables,
                       "disagreement_examples": examples}, f, indent=2)
        print(f"wrote {args.out}")


def reader_table(logit: np.ndarray, gen: np.ndarray, harmful: np.ndarray) -> dict[str, dict[str, float]]:
    table = {}
    for name, sel in (("all", slice(None)), ("harmful", harmful), ("benign", ~harmful)):
        lo, g = logit[sel], gen[sel]
        table[name] = {"n": int(len(lo)), "agreement": round(float((lo == g).mean()), 3),
                       "refuse_rate_logit": round(float(lo.mean()), 3), "refuse_rate_generate": round(float(g.mean()), 3),
                       "both_refuse": int((lo & g).sum()), "only_logit": int((lo & ~g).sum()),
                       "only_generate": int((~lo & g).sum()), "both_comply": int((~lo & ~g).sum())}
        table[name]["kappa"] = kappa(table[name])
    return table


def kappa(r: dict[str, float]) -> float:
    """Cohen's kappa from the 2x2 counts: agreement beyond what the two refusal rates give by chance."""
    n = r["both_refuse"] + r["only_logit"] + r["only_generate"] + r["both_comply"]
    seen = (r["both_refuse"] + r["both_comply"]) / n
    pl, pg = (r["both_refuse"] + r["only_logit"]) / n, (r["both_refuse"] + r["only_generate"]) / n
    chance = pl * pg + (1 - pl) * (1 - pg)
    return round((seen - chance) / (1 - chance), 3) if chance < 1 else 0.0


if __name__ == "__main__":
    main()
