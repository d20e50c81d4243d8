"""CLI start-up time, before vs after lazy imports, side by side in one run.

    python benchmarks/bench_cli.py [--before 74905d8] [--repeats 7]

`before` is the source tree at a git revision (extracted with `git archive` into a temp folder), `after` is this
checkout's src/. Each command runs as a fresh `python -m introspect.cli ...` process with PYTHONPATH pointing at one
tree; the two trees take turns, command by command, so machine load hits both alike. Reports the median wall time
per command and tree, and the ratio before/after. Results: benchmarks/results/bench_cli.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["run", "--help"], ["sample", "--help"], ["models"])


def extract_src(rev: str, into: Path) -> Path:
    blob = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    init = into / "src" / "introspect" / "__init__.py"
    if not init.is_file():  # before the package had one: a namespace package would lose to the editable install's
        init.write_text("")  # regular one, and both trees would time this checkout
    return into / "src"


def check_tree(src: Path) -> None:
    """Fail unless `python -m introspect.cli` with PYTHONPATH=src really imports the tree under `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run([sys.executable, "-c", "import introspect.cli; print(introspect.cli.__file__)"], env=env,
                       capture_output=True, text=True, check=True)
    if not Path(r.stdout.strip()).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"PYTHONPATH={src} imports {r.stdout.strip()}: the timing would not be of that tree")


def wall(src: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "introspect.cli", *argv], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"introspect {' '.join(argv)} failed with {src}: {r.stderr[-500:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="74905d8", help="git revision of the eager-import CLI (default: the last one)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_cli.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": extract_src(args.before, Path(tmp)), "after": ROOT / "src"}
        for src in trees.values():  # warm the file cache and .pyc compilation once per tree
            check_tree(src)
            wall(src, ["--help"])
        times: dict[str, dict[str, list[float]]] = {k: {" ".join(c): [] for c in COMMANDS} for k in trees}
        for _ in range(args.repeats):
            for cmd in COMMANDS:
                for name, src in trees.items():
                    times[name][" ".join(cmd)].append(wall(src, cmd))
    rows = []
    print(f"{'command':<16} {'before (s)':>10} {'after (s)':>10} {'ratio':>7}   (median of {args.repeats})")
    for cmd in COMMANDS:
        key = " ".join(cmd)
        b, a = statistics.median(times["before"][key]), statistics.median(times["after"][key])
        rows.append({"command": f"introspect {key}", "before_s": b, "after_s": a, "ratio": b / a})
        print(f"{key:<16} {b:>10.3f} {a:>10.3f} {b / a:>6.1f}x")
    out = {"before": args.before, "repeats": args.repeats, "cores": os.cpu_count(), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
