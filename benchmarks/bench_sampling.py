"""Behaviour sampling, side by side in one process, on the same pairs and the same model.

    python benchmarks/bench_sampling.py --n 200            # (make bench installs lm_eval first)

  (a) ancestor: TransluceAI/introspective-interp `recompute_labels_hint` — fp32, one prompt per forward, full
      logits, argmax of the next token over the whole vocabulary (re-implemented here; their code is not vendored).
  (b) ours: `introspect.behavior.score_pairs` — bf16 autocast, length-bucketed batches, the system turn's KV
      cache reused by every row, two pairs per prefix-tree row, fp32 head at the answer positions only, pairs with
      a near-tie (margin < --verify-margin) re-scored in fp32. Also ours without the fp32 re-check, ours without
      prefix sharing, and ours in fp32.
  (c) lm-evaluation-harness HFLM.loglikelihood on the same requests (context = prompt, continuation = each choice).
  (r) roofline: a plain batched bf16 forward over the same prompts (length-sorted, no bookkeeping).

Ours and the ancestor run once on a few pairs first, untimed (warm-up). Then the pairs are split into --chunks
chunks and every method runs on each chunk in turn (round-robin, the order rotating), so drift of this machine's
speed during the run hits all methods alike; a method's time is the sum over chunks. Reports pairs/s, tokens/s
(prompt tokens of both sides, the same count for every method), ratios, and answer agreement with (a) per prompt,
listing the disagreements. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from introspect.defaults import VERIFY_MARGIN
from introspect.behavior import autocast, encode_pairs, score_pairs
from introspect.tokens import choice_token_ids, left_pad
from introspect.files import write_jsonl
from introspect.paths import data_root
from introspect.runtime import seed_everything, set_threads
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
            ids, mask = left_pad([prompts[j] for j in order[i:i + batch_size]], pad_id)
            model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)


def lm_eval_model(model: Any, tok: Any, batch_size: int) -> Any:
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)


def lm_eval_answers(lm: Any, texts: list[str], continuations: list[str]) -> list[int]:
    from lm_eval.api.instance import Instance

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
    ap.add_argument("--chunks", type=int, default=2, help="the pairs are timed in this many round-robin chunks")
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
    kw = dict(pad_id=tok.pad_token_id, batch_size=args.batch_size)
    verified = [0]

    def ours(precision: str, share: bool, margin: float) -> Callable[[np.ndarray], list[str]]:
        def run(idx: np.ndarray) -> list[str]:
            res = score_pairs(model, [a[i] for i in idx], [b[i] for i in idx], cids, precision=precision,
                              share_prefix=share, verify_margin=margin, **kw)
            verified[0] += len(res.get("verified", [])) if margin else 0
            return [*letters[res["logp"].argmax(1)], *letters[res["logp_without"].argmax(1)]]
        return run

    def side_prompts(idx: np.ndarray) -> list[list[int]]:
        return [a[i] for i in idx] + [b[i] for i in idx]

    methods: dict[str, Callable[[np.ndarray], list[str] | None]] = {
        "ours": ours("bf16", True, args.verify_margin),
        "ours_bf16_unverified": ours("bf16", True, 0.0),
        "ours_no_prefix_share": ours("bf16", False, 0.0),
        "ours_fp32": ours("fp32", True, 0.0),
        "roofline_bf16_forward": lambda idx: roofline(model, side_prompts(idx), tok.pad_token_id, 2 * args.batch_size),
        "ancestor": lambda idx: ancestor(model, tok, side_prompts(idx)),
    }
    skip_name = {"ours_no_prefix_share": "noshare", "ours_fp32": "fp32", "ancestor": "ancestor"}
    methods = {k: f for k, f in methods.items() if skip_name.get(k) not in args.skip}
    lm_eval_note = None
    if "lm_eval" not in args.skip:
        try:
            lm = lm_eval_model(model, tok, 2 * args.batch_size)
            texts = [render_prompt(tok, p.messages, task.assistant_prefix) for p in pairs]
            texts += [render_prompt(tok, p.messages_without, task.assistant_prefix) for p in pairs]
            methods["lm_eval_hf"] = lambda idx: list(letters[lm_eval_answers(
                lm, [texts[i] for i in idx] + [texts[args.n + i] for i in idx], list(task.continuations))])
        except ImportError as e:
            lm_eval_note = f"lm_eval not importable ({e}); install with `pip install lm_eval` or `make bench`"
            print(lm_eval_note)

    # warm-up, untimed: the first bf16 and fp32 forwards of a process pay one-time kernel set-up costs
    score_pairs(model, a[:8], b[:8], cids, precision="bf16", verify_margin=1e9, **kw)
    ancestor(model, tok, prompts[:2])
    verified[0] = 0
    # round-robin over chunks of pairs, the method order rotating each round: drift of the machine's speed during
    # the run hits every method alike
    chunks = np.array_split(np.arange(args.n), args.chunks)
    seconds = {k: [] for k in methods}
    answers: dict[str, list[str | None]] = {k: [None] * len(prompts) for k in methods}
    names = list(methods)
    for c, idx in enumerate(tqdm(chunks, desc="chunks")):
        for name in names[c % len(names):] + names[:c % len(names)]:
            out, dt = timed(lambda: methods[name](idx))
            seconds[name].append(round(dt, 2))
            if out is not None:
                for j, i in enumerate(idx):
                    answers[name][i], answers[name][args.n + i] = out[j], out[len(idx) + j]
    results: dict[str, dict[str, Any]] = {}
    for name in methods:
        total = sum(seconds[name])
        results[name] = {"seconds": round(total, 2), "seconds_per_chunk": seconds[name],
                         "pairs_per_s": round(args.n / total, 3), "tokens_per_s": round(tokens / total, 1),
                         "answers": None if answers[name][0] is None else answers[name]}
        print(f"{name:<22} {total:8.1f}s  {args.n / total:7.2f} pairs/s  {tokens / total:8.0f} tokens/s", flush=True)
    print(f"  ours re-scored {verified[0]} of {len(prompts)} prompts in fp32 (margin < {args.verify_margin})")

    ref = results.get("ancestor", results.get("ours_fp32"))
    ref_name = "ancestor" if "ancestor" in results else "ours_fp32"
    summary: dict[str, Any] = {"n_pairs": args.n, "n_prompts": len(prompts), "tokens": tokens, "threads": threads,
                               "format": task.options()["format"], "reference": ref_name, "lm_eval_note": lm_eval_note,
                               "chunks": args.chunks, "fp32_rescored_prompts": verified[0]}
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
