"""`introspect` command line: one subcommand per stage, plus `demo`.

Every stage prints what it read, what it wrote and its throughput; bad input exits with code 2 and a message that
says what to change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import behavior, labels, metrics
from .config import DATA_ENV, REPO_ROOT, UserError, data_root, read_jsonl, seed_everything, write_jsonl
from .models import list_models, load_model
from .tasks import TASKS, get_task


def cmd_models(args: argparse.Namespace) -> None:
    for name, desc in list_models():
        print(f"{name:<24} {desc}")


def _task_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in args.task_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--task-option takes KEY=VALUE (e.g. openings=no-I), got {item!r}")
        opts[key] = yaml.safe_load(value)
    if args.task_format:
        opts["format"] = args.task_format
    return opts


def cmd_sample(args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(args.seed)
    task = get_task(args.task, **_task_options(args))
    root = data_root(args.data_root)
    pairs = task.pairs(root, args.split, args.n, args.seed)
    print(f"[sample] read {len(pairs)} {task.name} pairs from {root} (split {args.split}, seed {args.seed})")
    loaded = load_model(args.model, seed=args.seed)
    print(f"[sample] model {loaded.model_id} (weights {loaded.weights_hash}), precision {args.precision}")
    df, stats = behavior.sample_behavior(loaded.model, loaded.tokenizer, task, pairs, batch_size=args.batch_size,
                                         precision=args.precision, share_prefix=not args.no_share_prefix,
                                         verify_margin=args.verify_margin)
    meta = behavior.table_meta(model_id=loaded.model_id, weights_hash=loaded.weights_hash, task=task, pairs=pairs,
                               seed=args.seed, split=args.split, precision=args.precision)
    behavior.write_table(args.out, df, meta)
    print(f"[sample] {stats.line()}")
    print(f"[sample] wrote {args.out}")
    summary = behavior.summarize(df, task.choices)
    print(behavior.format_summary(summary, task.feature_name))
    summary["pairs_per_s"] = round(stats.pairs / stats.seconds, 2)
    summary["tokens_per_s"] = round(stats.tokens / stats.seconds)
    return summary


def cmd_label(args: argparse.Namespace) -> None:
    df, meta = behavior.read_table(args.behavior)
    task = behavior.task_of(meta)
    print(f"[label] read {len(df)} rows of B({meta['model_id']}) from {args.behavior}")
    lab = labels.make_labels(df, task, meta)
    if args.noise:
        lab = labels.add_noise(lab, args.noise, args.noise_seed, task.choices, task.tag)
    out_meta = {**meta, "labels_from": args.behavior, "label_noise": args.noise, "noise_seed": args.noise_seed}
    behavior.write_table(args.out, lab, out_meta)
    print(f"[label] {len(lab)} labels ({lab['changed'].mean():.1%} changed, {int(lab['noisy'].sum())} noisy) "
          f"-> wrote {args.out}")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Predictions JSONL: one object per line with "pair_id" (str) and "text" (the raw explanation)."""
    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get("pair_id"), str) or not isinstance(r.get("text"), str):
            raise UserError(f"{path}: record {i} needs string fields \"pair_id\" and \"text\"")
    return pd.DataFrame(rows, columns=["pair_id", "text"])


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    gold, meta = behavior.read_table(args.gold)
    pred = read_predictions(args.pred)
    unknown = sorted(set(pred["pair_id"]) - set(gold["pair_id"]))
    if unknown:
        raise UserError(f"{args.pred}: {len(unknown)} pair_id(s) not in {args.gold}, e.g. {unknown[0]!r}")
    missing = sorted(set(gold["pair_id"]) - set(pred["pair_id"]))
    if missing and not args.allow_missing:
        raise UserError(f"{args.pred}: no prediction for {len(missing)} gold item(s), e.g. {missing[0]!r} "
                        f"(pass --allow-missing to score them as unparseable)")
    merged = gold.merge(pred, on="pair_id", how="left").fillna({"text": ""})
    it = metrics.items(merged["text"].tolist(), merged["changed"], merged["letter"], meta["choices"])
    result = metrics.score(it, seed=args.seed, n_boot=args.n_boot)
    print(f"[score] {len(pred)} predictions from {args.pred} against {args.gold}")
    print(metrics.format_table(result))
    if args.out:
        write_jsonl(args.out, [result])
        print(f"[score] wrote {args.out}")
    return result


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def cmd_train(args: argparse.Namespace) -> None:
    from .train import load_config, train

    path = args.config or args.config_path
    if not path:
        raise UserError("introspect train needs a config: --config configs/NAME.yaml (or the path as the first argument)")
    cfg = load_config(path, _parse_overrides(args.set))
    train(cfg, resume=args.resume)


def cmd_run(args: argparse.Namespace) -> None:
    from .pipeline import load_run_config, run

    run(load_run_config(args.config, _parse_overrides(args.set)))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .pipeline import config_of_run, stage_evaluate

    cfg = config_of_run(args.run_dir)
    if args.checkpoints:
        cfg.evaluate.checkpoints = args.checkpoints
    stage_evaluate(cfg)
    print(f"[evaluate] wrote {cfg.path('eval', 'results.json')}")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    path = write_report(Path(args.run_dir))
    print(f"[report] wrote {path}, {Path(args.run_dir) / 'summary.md'} and {Path(args.run_dir) / 'figures'}/")


def cmd_demo(args: argparse.Namespace) -> None:
    """The whole pipeline on the bundled SmolLM2 with a preset sized for 2 CPU cores (configs/demo.yaml)."""
    from .pipeline import load_run_config, run

    overrides = _parse_overrides(args.set)
    if args.data_root:
        overrides["data_root"] = args.data_root
    run(load_run_config(args.config, overrides))


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name, local dir or hub id (see `introspect models`)")
    p.add_argument("--split", default="val", help="data split, e.g. val, dev, test, val+dev")
    p.add_argument("--n", type=int, default=200, help="number of pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help=f"benchmark data folder (default: ${DATA_ENV} or ../shared/data)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--batch-size", type=int, default=4, help="pairs per forward")
    p.add_argument("--verify-margin", type=float, default=behavior.VERIFY_MARGIN,
                   help="bf16 near-ties closer than this (nats) are re-scored in fp32; 0 turns it off")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="introspect", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("models", help="list known models").set_defaults(fn=cmd_models)

    p = sub.add_parser("sample", help="behaviour of a model on both sides of every pair -> BehaviorTable")
    _add_common(p)
    p.add_argument("--task", default="hint-mmlu", choices=sorted(TASKS))
    p.add_argument("--task-format", default=None, help="task prompt format (hint-mmlu: dot, paren, ...; aita: words, verdict)")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="any task option, repeatable (e.g. --task-option openings=no-I for refusal)")
    p.add_argument("--no-share-prefix", action="store_true", help="run x and x∖C as separate prompts")
    p.add_argument("--out", required=True, help="output Parquet path")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("label", help="explanation labels E(M) from a BehaviorTable")
    p.add_argument("--behavior", required=True, help="BehaviorTable Parquet (any model's)")
    p.add_argument("--out", required=True, help="output Parquet path")
    p.add_argument("--noise", type=float, default=0.0, help="fraction of labels to corrupt (see labels.add_noise)")
    p.add_argument("--noise-seed", type=int, default=0)
    p.set_defaults(fn=cmd_label)

    p = sub.add_parser("score", help="score explanations (JSONL: pair_id, text) against labels")
    p.add_argument("--pred", required=True, help='JSONL, one {"pair_id": ..., "text": ...} per line')
    p.add_argument("--gold", required=True, help="labels Parquet from `introspect label`")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--allow-missing", action="store_true")
    p.add_argument("--out", default=None, help="write the metrics JSONL here")
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("train", help="coupling training from a YAML config (see configs/)")
    p.add_argument("config_path", nargs="?", help="the YAML config (same as --config; use this form under "
                   "`accelerate launch`, whose own --config_file would swallow --config)")
    p.add_argument("--config", default=None)
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override top-level config keys")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("run", help="sample -> label -> train -> evaluate -> report from one YAML (skips current stages)")
    p.add_argument("config")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override top-level config keys")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("evaluate", help="Self vs Orig for M0 and every checkpoint of a run (cached, resumable)")
    p.add_argument("run_dir")
    p.add_argument("--checkpoints", nargs="*", type=int, default=None, help="steps to evaluate (default: all)")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("report", help="report.html, summary.md and figures/ for an evaluated run")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled SmolLM2 (configs/demo.yaml, about 8 min on 2 cores)")
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "demo.yaml"))
    p.add_argument("--data-root", default=None, help=f"benchmark data folder (default: ${DATA_ENV} or ../shared/data)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override top-level config keys")
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except UserError as e:
        print(f"introspect {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
