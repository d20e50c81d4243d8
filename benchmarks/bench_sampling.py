"""Behaviour sampling, side by side in one process, on the same pairs and the same model.

    python benchmarks/bench_sampling.py --n 200            # (make bench installs lm_eval first)

  (a) ancestor: TransluceAI/introspective-interp `recompute_labels_hint` — fp32, one prompt per forward, full
      logits, argmax of the next token over the whole vocabulary (re-implemented here; their code is not vendored).
  (b) ours: `introspect.behavior.score_pairs` — bf16 autocast, length-bucketed batches, shared-prefix KV reuse,
      fp32 head at the answer position only, near-ties (margin < --verify-margin) re-scored in fp32. Also ours
      without the fp32 re-check, ours without prefix sharing, and ours in fp32.
  (c) lm-evaluation-harness HFLM.loglikelihood on the same requests (context = prompt, continuation = each choice).
  (r) roofline: a plain batched bf16 forward over the same prompts (length-sorted, no bookkeeping).

Reports pairs/s, tokens/s (prompt tokens of both sides, the same count for every method), ratios, and answer
agreement with (a) per prompt, listing the disagreements. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
import torch

from introspect.behavior import VERIFY_MARGIN, _left_pad, autocast, choice_token_ids, encode_pairs, score_pairs
from introspect.config import data_root, seed_everything, set_threads, write_jsonl
from introspect.models import load_model, render_prompt
from introspect.tasks import get_task


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@torch.no_grad()
def ancestor(model: Any, tok: Any, prompts: list[list[int]]) -> list[str]:
    """fp32, one prompt per forward, argmax over the vocabulary, decoded and stripped (their recompute_labels_hint)."""
    out = []
    for ids in prompts:
        logits = model(torch.tensor([ids])).logits[0, -1, :]
        out.append(tok.convert_tokens_to_string(tok.convert_ids_to_tokens([int(torch.argmax(logits))])).strip())
    return out


@torch.no_grad()
def roofline(model: Any, prompts: list[list[int]], pad_id: int, batch_size: int) -> None:
    order = np.argsort([len(p) for p in prompts])
    with autocast("bf16"):
        for i in range(0, len(order), batch_size):
            ids, mask = _left_pad([prompts[j] for j in order[i:i + batch_size]], pad_id)
            model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)


def lm_eval_answers(model: Any, tok: Any, texts: list[str], continuations: list[str], batch_size: int) -> list[int]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    reqs = [Instance("loglikelihood", {}, (t, c), idx=j) for t in texts for j, c in enumerate(continuations)]
    ll = np.array([r[0] for r in lm.loglikelihood(reqs, disable_tqdm=True)]).reshape(len(texts), len(continuations))
    return ll.argmax(1).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--split", default="val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task-format", default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--verify-margin", type=float, default=VERIFY_MARGIN)
    ap.add_argument("--skip", nargs="*", default=[], help="methods to skip: ancestor lm_eval fp32 noshare")
    ap.add_argument("--out", default="benchmarks/results/bench_sampling.json")
    args = ap.parse_args()
    seed_everything(args.seed)
    threads = set_threads()
    task = get_task("hint-mmlu", **({"format": args.task_format} if args.task_format else {}))
    pairs = task.pairs(data_root(), args.split, args.n, args.seed)
    loaded = load_model(args.model, hash_weights=False)
    model, tok = loaded.model, loaded.tokenizer
    a, b = encode_pairs(tok, task, pairs)
    prompts = a + b
    tokens = sum(map(len, prompts))
    cids = choice_token_ids(tok, task.continuations)
    letters = np.array(task.choices)
    print(f"{args.n} pairs ({len(prompts)} prompts, {tokens} tokens, format {task.options()['format']}), "
          f"model {args.model}, {threads} threads")
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, answers: list[str] | None, seconds: float) -> None:
        results[name] = {"seconds": round(seconds, 2), "pairs_per_s": round(args.n / seconds, 3),
                         "tokens_per_s": round(tokens / seconds, 1), "answers": answers}
        print(f"{name:<22} {seconds:8.1f}s  {args.n / seconds:7.2f} pairs/s  {tokens / seconds:8.0f} tokens/s", flush=True)

    kw = dict(pad_id=tok.pad_token_id, batch_size=args.batch_size)
    res, dt = timed(lambda: score_pairs(model, a, b, cids, precision="bf16", share_prefix=True,
                                        verify_margin=args.verify_margin, **kw))
    record("ours", [*letters[res["logp"].argmax(1)], *letters[res["logp_without"].argmax(1)]], dt)
    print(f"  ({len(res.get('verified', []))} of {len(prompts)} prompts re-scored in fp32 at margin < {args.verify_margin})")
    res, dt = timed(lambda: score_pairs(model, a, b, cids, precision="bf16", share_prefix=True, **kw))
    record("ours_bf16_unverified", [*letters[res["logp"].argmax(1)], *letters[res["logp_without"].argmax(1)]], dt)
    if "noshare" not in args.skip:
        res, dt = timed(lambda: score_pairs(model, a, b, cids, precision="bf16", share_prefix=False, **kw))
        record("ours_no_prefix_share", [*letters[res["logp"].argmax(1)], *letters[res["logp_without"].argmax(1)]], dt)
    if "fp32" not in args.skip:
        res, dt = timed(lambda: score_pairs(model, a, b, cids, precision="fp32", share_prefix=True, **kw))
        record("ours_fp32", [*letters[res["logp"].argmax(1)], *letters[res["logp_without"].argmax(1)]], dt)
    _, dt = timed(lambda: roofline(model, prompts, tok.pad_token_id, 2 * args.batch_size))
    record("roofline_bf16_forward", None, dt)
    if "ancestor" not in args.skip:
        ans, dt = timed(lambda: ancestor(model, tok, prompts))
        record("ancestor", ans, dt)
    lm_eval_note = None
    if "lm_eval" not in args.skip:
        try:
            texts = [render_prompt(tok, p.messages, task.assistant_prefix) for p in pairs]
            texts += [render_prompt(tok, p.messages_without, task.assistant_prefix) for p in pairs]
            idx, dt = timed(lambda: lm_eval_answers(model, tok, texts, list(task.continuations), 2 * args.batch_size))
            record("lm_eval_hf", list(letters[idx]), dt)
        except ImportError as e:
            lm_eval_note = f"lm_eval not importable ({e}); install with `pip install lm_eval` or `make bench`"
            print(lm_eval_note)

    ref = results.get("ancestor", results.get("ours_fp32"))
    ref_name = "ancestor" if "ancestor" in results else "ours_fp32"
    summary: dict[str, Any] = {"n_pairs": args.n, "n_prompts": len(prompts), "tokens": tokens, "threads": threads,
                               "format": task.options()["format"], "reference": ref_name, "lm_eval_note": lm_eval_note}
    print(f"\nratios and agreement with {ref_name} (per prompt):")
    for name, r in results.items():
        line = {"speedup_vs_ancestor": round(results["ancestor"]["seconds"] / r["seconds"], 2) if "ancestor" in results else None,
                "tokens_per_s_vs_roofline": round(r["tokens_per_s"] / results["roofline_bf16_forward"]["tokens_per_s"], 3)}
        if r["answers"] is not None and ref is not None:
            same = [x == y for x, y in zip(r["answers"], ref["answers"])]
            line["agreement"] = round(float(np.mean(same)), 4)
            line["disagreements"] = [{"prompt": i, "pair_id": pairs[i % args.n].id, "side": "with" if i < args.n else "without",
                                      name: r["answers"][i], ref_name: ref["answers"][i]} for i, s in enumerate(same) if not s]
        summary[name] = {k: v for k, v in r.items() if k != "answers"} | line
        print(f"  {name:<22} speedup {line['speedup_vs_ancestor']}x  roofline {line['tokens_per_s_vs_roofline']:.0%}  "
              f"agreement {line.get('agreement', '-')}  ({len(line.get('disagreements', []))} disagreements)")
    write_jsonl(args.out, [summary])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
