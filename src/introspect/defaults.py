"""Defaults read in more than one place, each written once here (a config field, a CLI flag and the docs read them)."""

DEFAULT_MODEL = "smollm2-135m-instruct"  # M0 when a config or flag names none (the bundled SmolLM2)
VERIFY_MARGIN = 0.015  # bf16 near-ties closer than this (nats) are re-scored in fp32; see docs/benchmarks.md
