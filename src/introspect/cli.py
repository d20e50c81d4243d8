"""`introspect` command line: one subcommand per stage, plus `demo`.

Every stage prints what it read, what it wrote and its throughput; bad input exits with code 2 and a message that
says what to change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import write_jsonl
from .paths import DATA_ENV, REPO_ROOT, data_root
from .runtime import seed_everything
from .models import list_models
from .run_config import EvalConfig, RunConfig, Selection
from .cli_audit import add_audit_parser
from .cli_experiment import add_experiment_parser, add_intervene_parser
from .tasks import TASKS
from .typed import parse_assignment


def cmd_models(args: argparse.Namespace) -> None:
    for name, desc in list_models():
        print(f"{name:<24} {desc}")


def _task_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = dict(parse_assignment(item, "--task-option") for item in args.task_option or [])
    if args.task_format:
        opts["format"] = args.task_format
    return opts


def _selection(args: argparse.Namespace) -> Any:
    from .run_config import Selection

    if args.min_margin < 0 or args.pool < 0:
        raise UserError("--min-margin and --pool must be >= 0")
    return Selection(min_margin=args.min_margin, balance=args.balance, pool=args.pool)


def _sample_spec(args: argparse.Namespace, **fixed: Any) -> Any:
    from .stages.sample import SampleSpec

    if args.n <= 0:
        raise UserError(f"--n must be a positive number of pairs, got {args.n}")
    spec = dict(model=args.model, task=args.task, task_options=_task_options(args), root=data_root(args.data_root),
                split=args.split, n=args.n, seed=args.seed, precision=args.precision, verify_margin=args.verify_margin,
                device=args.device, batch_size=args.batch_size)
    return SampleSpec(**{**spec, **fixed})


def cmd_sample(args: argparse.Namespace) -> None:
    from .stages import sample

    spec = _sample_spec(args)
    seed_everything(args.seed)
    sel = _selection(args)
    spec.select, spec.pool, spec.share_prefix = sel, sel.pool, not args.no_share_prefix
    sample.run(spec, Path(args.out))


def cmd_label(args: argparse.Namespace) -> None:
    from .stages import label

    label.run(label.LabelSpec(Path(args.behavior), args.noise, args.noise_seed), Path(args.out))


def cmd_screen(args: argparse.Namespace) -> dict[str, Any]:
    import json

    from .stages import screen

    spec = screen.ScreenSpec(sample=_sample_spec(args, precision="fp32", verify_margin=0.0),
                             behavior=Path(args.behavior) if args.behavior else None, min_margin=args.min_margin,
                             epsilon=args.epsilon, balance=args.balance, train_split=args.train_split,
                             eval_split=args.eval_split, name=args.name or "")
    return json.loads(screen.run(spec, Path(args.out)).read_text())


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    import json

    from . import metrics
    from .score_files import read_gold, read_predictions

    if args.n_boot < 1:
        raise UserError(f"--n-boot must be >= 1 bootstrap resamples, got {args.n_boot}")
    gold, choices = read_gold(args.gold, args.choices.split(",") if args.choices else None)
    pred = read_predictions(args.pred)
    if not len(gold) or not len(pred):
        raise UserError(f"{args.gold if not len(gold) else args.pred}: no rows to score")
    unknown = sorted(set(pred["pair_id"]) - set(gold["pair_id"]))
    if unknown:
        raise UserError(f"{args.pred}: {len(unknown)} pair_id(s) not in {args.gold}, e.g. {unknown[0]!r}")
    missing = sorted(set(gold["pair_id"]) - set(pred["pair_id"]))
    if missing and not args.allow_missing:
        raise UserError(f"{args.pred}: no prediction for {len(missing)} gold item(s), e.g. {missing[0]!r} "
                        f"(pass --allow-missing to score them as unparseable)")
    merged = gold.merge(pred, on="pair_id", how="left").fillna({"text": ""})
    it = metrics.items(merged["text"].tolist(), merged["changed"], merged["letter"], choices,
                       lenient_letter=args.lenient_content)
    result = metrics.score(it, seed=args.seed, n_boot=args.n_boot)
    if args.json:  # valid JSON always: NaN (an undefined metric) is null
        print(json.dumps(_nan_to_none(result), indent=2))
    else:
        print(f"[score] {len(pred)} predictions from {args.pred} against {args.gold} (choices {','.join(choices)})")
        print(metrics.format_table(result))
    if args.out:
        write_jsonl(args.out, [result])
        print(f"[score] wrote {args.out}", file=sys.stderr if args.json else sys.stdout)
    return result


def cmd_dpo(args: argparse.Namespace) -> None:
    import json

    from .integrations import dpo
    from .report import headline
    from .run_config import load_run_config

    if args.beta <= 0:
        raise UserError(f"--beta must be > 0, got {args.beta}")
    out = dpo.run(load_run_config(args.config, list(args.set)), beta=args.beta)
    print(f"[dpo] wrote {out}")
    print(headline(json.loads(out.read_text())))


def cmd_compare(args: argparse.Namespace) -> int:
    from . import compare

    a, b = Path(args.a), Path(args.b)
    if a.is_dir() and b.is_dir():
        if args.out:
            raise UserError("--out is for two BehaviorTables; two run directories are compared on the screen")
        return 0 if compare.runs(a, b) else 1
    if a.suffix == ".parquet" and b.suffix == ".parquet":
        compare.behaviour(a, b, Path(args.out) if args.out else None)
        return 0
    raise UserError(f"compare takes two run directories or two BehaviorTables (.parquet), got {a} and {b}")


def cmd_train(args: argparse.Namespace) -> None:
    from .train import load_config, train

    path = args.config or args.config_path
    if not path:
        raise UserError("introspect train needs a config: --config configs/NAME.yaml (or the path as the first argument)")
    from .locking import locked

    cfg = load_config(path, args.set)
    with locked(Path(cfg.out_dir)):  # two trainers on one out_dir would write over each other's checkpoints
        train(cfg, resume=args.resume)


def cmd_run(args: argparse.Namespace) -> None:
    from .pipeline import run
    from .run_config import load_run_config

    overrides = list(args.set)
    if getattr(args, "data_root", None):
        overrides.append(f"data_root={args.data_root}")
    run(load_run_config(args.config, overrides))


def cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from .locking import locked
    from .report import headline
    from .run_config import config_of_run

    cfg = config_of_run(args.run_dir)
    if args.checkpoints:
        cfg.evaluate.checkpoints = args.checkpoints
    from .devices import secondary

    from .stages import evaluate

    with locked(Path(args.run_dir)):
        out = evaluate.run(cfg)
    if not secondary():
        print(f"[evaluate] wrote {out}")
        print(headline(json.loads(out.read_text())))


def cmd_report(args: argparse.Namespace) -> None:
    from .locking import locked
    from .report import load_results
    from .stages import report

    load_results(Path(args.run_dir))  # the error that says what to run first, before a lock file is made
    with locked(Path(args.run_dir)):  # never during a run: its page would mix this config with older results
        path = report.run(Path(args.run_dir))
    print(f"[report] wrote {path}, {Path(args.run_dir) / 'summary.md'} and {Path(args.run_dir) / 'figures'}/")


def task_options_epilog(argv: list[str] | None) -> str:
    """The task options of the task named by --task in argv (all tasks without one), generated from the tasks."""
    from .tasks.base import option_help

    argv = sys.argv[1:] if argv is None else argv
    named = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--task"]
    named += [a.split("=", 1)[1] for a in argv if a.startswith("--task=")]
    shown = [t for t in named if t in TASKS] or sorted(TASKS)
    lines = ["task options (--task-option KEY=VALUE, or task_options: in a config):"]
    for name in shown:
        lines += [f"{name}:", *option_help(TASKS[name])]
    return "\n".join(lines)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=RunConfig.model, help="registry name, local dir or hub id (see `introspect models`)")
    p.add_argument("--split", default="val", help="data split, e.g. val, dev, test, val+dev")
    p.add_argument("--n", type=int, default=200, help="number of pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help=f"benchmark data folder (default: ${DATA_ENV} or ../shared/data)")
    p.add_argument("--precision", default=RunConfig.precision, choices=["bf16", "fp32"])
    p.add_argument("--device", default=RunConfig.device, help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per forward")
    p.add_argument("--verify-margin", type=float, default=RunConfig.verify_margin,
                   help="bf16 near-ties closer than this (nats) are re-scored in fp32; 0 turns it off")
    p.add_argument("--task", default="hint-mmlu", choices=sorted(TASKS))
    p.add_argument("--task-format", default=None, help="task prompt format (hint-mmlu: dot, paren, ...; aita: words, verdict)")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="any task option, repeatable (e.g. --task-option openings=no-I for refusal; the list is below)")
    p.add_argument("--min-margin", type=float, default=Selection.min_margin,
                   help="keep pairs whose top-1 minus top-2 choice log-prob is >= this on both sides (nats)")
    p.add_argument("--balance", action="store_true", help="keep equal numbers of changed and unchanged pairs")


def add_set_flag(p: argparse.ArgumentParser) -> None:
    """--set KEY=VALUE ...: repeatable; every item of every --set applies (`--set a=1 --set b=2` = `--set a=1 b=2`)."""
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, nested with dots (e.g. train.weights.behavior_kl=0); repeatable")


def version() -> str:
    from . import __version__

    return __version__


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="introspect", description=__doc__.splitlines()[0])
    with_tasks = dict(epilog=task_options_epilog(argv), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"introspect {version()}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("models", help="list known models").set_defaults(fn=cmd_models)

    add_table_stage_parsers(sub, with_tasks)
    add_run_parsers(sub)
    act = add_audit_parser(sub)
    exp = add_experiment_parser(sub)
    add_intervene_parser(sub)

    for p in [*sub.choices.values(), *act.choices.values(), *exp.choices.values()]:
        p.set_defaults(parser=p)
    return ap


def add_table_stage_parsers(sub: Any, with_tasks: dict[str, Any]) -> None:
    """sample, label, screen, score: the stages that read and write tables."""
    p = sub.add_parser("sample", help="behaviour of a model on both sides of every pair -> BehaviorTable", **with_tasks)
    _add_common(p)
    p.add_argument("--pool", type=int, default=Selection.pool, help="sample this many pairs, then keep --n by margin/balance")
    p.add_argument("--no-share-prefix", action="store_true", help="run x and x∖C as separate prompts")
    p.add_argument("--out", required=True, help="output Parquet path")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("label", help="explanation labels E(M) from a BehaviorTable")
    p.add_argument("--behavior", required=True, help="BehaviorTable Parquet (any model's)")
    p.add_argument("--out", required=True, help="output Parquet path")
    p.add_argument("--noise", type=float, default=0.0, help="fraction of labels to corrupt (see labels.add_noise)")
    p.add_argument("--noise-seed", type=int, default=0)
    p.set_defaults(fn=cmd_label)

    p = sub.add_parser("screen", help="is a setting testable? margins, changed rate, class balance (fp32), verdict",
                       **with_tasks)
    _add_common(p)
    p.add_argument("--epsilon", type=float, default=0.01, help="KL budget: share of pairs whose argmax survives it")
    p.add_argument("--train-split", default="val+dev", help="split the training pairs would come from (projection)")
    p.add_argument("--eval-split", default="test", help="split the eval pairs would come from (projection)")
    p.add_argument("--behavior", default=None, help="screen an existing BehaviorTable instead of sampling")
    p.add_argument("--name", default=None, help="a name for the setting in the output")
    p.add_argument("--out", required=True, help="output folder: behavior.parquet, screen.json, screen.png")
    p.set_defaults(fn=cmd_screen)

    p = sub.add_parser("score", help="score explanations (JSONL: pair_id, text) against labels")
    p.add_argument("--pred", required=True, help='JSONL, one {"pair_id": ..., "text": ...} per line')
    p.add_argument("--gold", required=True, help="gold labels: JSONL or CSV with pair_id, changed, letter; or a labels "
                   "Parquet from `introspect label`")
    p.add_argument("--choices", default=None, help="comma-separated choice set (default: from the gold file)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON at full precision")
    p.add_argument("--lenient-content", action="store_true",
                   help="Content Match as the ancestor counts it: a right letter counts even when no verdict parses")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--n-boot", type=int, default=EvalConfig.n_boot)
    p.add_argument("--allow-missing", action="store_true")
    p.add_argument("--out", default=None, help="write the metrics JSONL here")
    p.set_defaults(fn=cmd_score)


def add_run_parsers(sub: Any) -> None:
    """train, run, evaluate, report, demo: the stages of a run."""
    p = sub.add_parser("train", help="coupling training from a YAML config (see configs/)")
    p.add_argument("config_path", nargs="?", help="the YAML config (same as --config; use this form under "
                   "`accelerate launch`, whose own --config_file would swallow --config)")
    p.add_argument("--config", default=None)
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    add_set_flag(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("run", help="sample -> label -> train -> evaluate -> report from one YAML (skips current stages)")
    p.add_argument("config")
    add_set_flag(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("evaluate", help="Self vs Orig for M0 and every checkpoint of a run (cached, resumable)")
    p.add_argument("run_dir")
    p.add_argument("--checkpoints", nargs="*", type=int, default=None, help="steps to evaluate (default: all)")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("report", help="report.html, summary.md and figures/ for an evaluated run")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("dpo", help="TRL DPO for sycophancy reduction with coupling on, then evaluate (docs/trl.md; "
                       "needs the [trl] extra)")
    p.add_argument("config", help="a run config (its train section sets the DPO run and the coupling terms)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's beta (strength of the preference against the reference)")
    add_set_flag(p)
    p.set_defaults(fn=cmd_dpo)

    p = sub.add_parser("compare", help="two run directories (the same run?) or two BehaviorTables (agreement)")
    p.add_argument("a", help="RUN_A or A.parquet")
    p.add_argument("b", help="RUN_B or B.parquet")
    p.add_argument("--out", default=None, help="two tables: also write the agreement as JSON here")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled SmolLM2 (configs/demo.yaml; time and memory: README)")
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "demo.yaml"))
    p.add_argument("--data-root", default=None, help=f"benchmark data folder (default: ${DATA_ENV} or ../shared/data)")
    add_set_flag(p)
    p.set_defaults(fn=cmd_run)


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser(argv).parse_known_args(argv)
    if unknown:  # a mistyped flag gets the usage of the subcommand it was meant for, not the top-level one
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code = args.fn(args)
    except UserError as e:
        print(f"introspect {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nintrospect {args.cmd}: interrupted. Finished stages and saved checkpoints are kept: run the same "
              f"command again to resume.", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"introspect {args.cmd}: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ != "SafetensorError":  # safetensors' own error: a full disk or a truncated file
            raise
        print(f"introspect {args.cmd}: error: a safetensors file could not be written or read ({e}): if the disk is "
              f"full, free space and run the same command again; a truncated checkpoint is re-made", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


def os_error_line(e: OSError) -> str:
    """One line for a fault of the machine (disk full, read-only folder, a missing path): the file and what to do."""
    import errno

    where = e.filename or "a file"
    what = e.strerror or str(e)
    hint = {errno.ENOSPC: "free disk space, then run the same command again (finished stages are kept)",
            errno.EDQUOT: "free disk space, then run the same command again (finished stages are kept)",
            errno.EROFS: "the folder is read-only: choose a writable run directory (config key run_dir / flag --out)",
            errno.EACCES: "no permission: choose a writable path (config key run_dir / flag --out)",
            errno.ENOENT: "the path does not exist: check it, or create its folder"}.get(e.errno, "check the path")
    return f"{where}: {what}: {hint}"


if __name__ == "__main__":
    sys.exit(main())
