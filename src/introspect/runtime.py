"""The process's determinism and threads: one seed for every generator, every core this process may use."""

from __future__ import annotations

import os
import random


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads() -> int:
    """Use every core this process may run on."""
    import torch

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n
