"""Agreement of two models' behaviour on the same pairs: a thin wrapper of `introspect compare A.parquet B.parquet`
(src/introspect/compare.py).

    python scripts/cross_family.py A/behavior.parquet B/behavior.parquet [--out docs/cross_family.json]
"""

from __future__ import annotations

import sys

from introspect import cli

if __name__ == "__main__":
    sys.exit(cli.main(["compare", *sys.argv[1:]]))
