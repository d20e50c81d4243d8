"""Are two run directories the same run? A thin wrapper of `introspect compare RUN_A RUN_B` (src/introspect/compare.py).

    python scripts/compare_runs.py RUN_A RUN_B       # exit 0 when identical, 1 otherwise
"""

from __future__ import annotations

import sys

from introspect import cli

if __name__ == "__main__":
    sys.exit(cli.main(["compare", *sys.argv[1:]]))
