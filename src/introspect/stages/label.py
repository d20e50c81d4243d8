"""Stage `label`: E(M) from a BehaviorTable, optionally with label noise -> a labels table (`introspect label`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import labels, provenance
from ..tables import read_table, task_of, write_table


@dataclass
class LabelSpec:
    source: Path  # the BehaviorTable whose behaviour the labels describe (M0's, or another model's)
    noise: float = 0.0  # fraction of labels corrupted (labels.add_noise)
    noise_seed: int = 0


def run(spec: LabelSpec, out: Path) -> Path:
    """The labels table at `out` (skipped when current)."""
    source = Path(spec.source)
    wanted = provenance.inputs(source=provenance.stored_inputs(source) or read_table(source)[1], noise=spec.noise,
                               noise_seed=spec.noise_seed, format=[labels.UNCHANGED, labels.CHANGED])
    if provenance.is_current(out, wanted, "label"):
        return out
    df, meta = read_table(source)
    task = task_of(meta)
    lab = labels.make_labels(df, task)
    if spec.noise:
        lab = labels.add_noise(lab, spec.noise, spec.noise_seed, task.choices, task.tag)
    write_table(out, lab, {**meta, "inputs": wanted, "labels_from": str(source), "label_noise": spec.noise,
                           "noise_seed": spec.noise_seed})
    print(f"[label] {len(lab)} labels from B({meta['model_id']}) ({lab['changed'].mean():.1%} changed, "
          f"{int(lab['noisy'].sum())} noisy) -> {out}")
    return out
