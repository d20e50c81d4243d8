"""The pipeline's stages, one module each, all of one shape: `run(cfg, ...) -> Path`.

`cfg` is the stage's typed input (a spec dataclass for the table stages, the RunConfig for the run-level ones), the
return value is the file or folder the stage wrote or found current. Each stage decides "current or re-run" by
`provenance.is_current` on the inputs it records, so any stage can be run alone (the CLI's single-stage commands call
these same functions) and `pipeline.run` only orders them.

| stage        | reads                                        | writes                                          |
|--------------|----------------------------------------------|-------------------------------------------------|
| `sample`     | a model, a task's pairs                      | a BehaviorTable (Parquet): B(M) on x and x∖C    |
| `screen`     | a BehaviorTable sampled in fp32 (or samples) | screen.json + screen.png: is a setting testable |
| `label`      | a BehaviorTable                              | a labels table: E(M), optionally noisy          |
| `train`      | RUN/train/behavior + labels                  | RUN/train/checkpoints/step_*, metrics.jsonl     |
| `evaluate`   | RUN/train, the eval split                    | RUN/eval/: per-checkpoint Self/Orig, results.json |
| `report`     | RUN/eval/results.json, RUN/train/metrics     | RUN/report.html, summary.md, figures/           |

Stages never import `pipeline` (the orchestrator imports them): tests/test_imports.py checks that src/ has no
import cycle.
"""
