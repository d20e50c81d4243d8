"""Stage `report`: RUN/report.html, summary.md and figures/ from an evaluated run (`introspect report`). The page
itself is report.py; the figures are report_figures.py."""

from __future__ import annotations

from pathlib import Path

from ..report import write_report
from ..run_config import RunConfig


def run(cfg: RunConfig | Path) -> Path:
    """The report of a run (its config, or its directory: a report needs only RUN/eval/results.json)."""
    return write_report(Path(cfg.run_dir) if isinstance(cfg, RunConfig) else Path(cfg))
