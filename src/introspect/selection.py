"""Which sampled pairs a run keeps: a minimum confidence margin on both sides, and class balance.

margin = top-1 minus top-2 choice log-prob (nats), the smaller of the two sides of a pair. A pair with a small
margin is a near-tie: a tiny weight change flips its argmax, so its label cannot stay true under training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .behavior import margin
from .errors import UserError


def margins(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, the top-1 minus top-2 log-prob with C and without C."""
    a, b = (margin(np.log(np.clip(np.array(df[c].tolist(), dtype=np.float64), 1e-30, None)))
            for c in ("probs", "probs_without"))
    return a, b


def pair_margin(df: pd.DataFrame) -> np.ndarray:
    a, b = margins(df)
    return np.minimum(a, b)


def select(df: pd.DataFrame, *, n: int, min_margin: float = 0.0, balance: bool = False, seed: int = 0,
           where: str = "selection") -> pd.DataFrame:
    """`n` rows with margin >= min_margin on both sides; with `balance`, half changed and half unchanged.
    Rows keep their sampled order. Too few qualifying rows is a UserError with the counts."""
    keep = df[pair_margin(df) >= min_margin]
    rng = np.random.default_rng(seed)
    if balance:
        changed, unchanged = keep[keep["changed"]], keep[~keep["changed"]]
        half = n // 2
        if len(changed) < n - half or len(unchanged) < half:
            raise UserError(f"{where}: selection needs {n - half} changed and {half} unchanged pairs with margin >= "
                            f"{min_margin}; the pool has {len(changed)} and {len(unchanged)} (raise selection.pool, lower "
                            f"selection.min_margin or n)")
        idx = np.concatenate([rng.choice(changed.index.to_numpy(), n - half, replace=False),
                              rng.choice(unchanged.index.to_numpy(), half, replace=False)])
    else:
        if len(keep) < n:
            raise UserError(f"{where}: {len(keep)} of {len(df)} pool pairs have margin >= {min_margin}, fewer than "
                            f"the {n} asked for (raise selection.pool, lower selection.min_margin or n)")
        idx = rng.choice(keep.index.to_numpy(), n, replace=False)
    return df.loc[np.sort(idx)].reset_index(drop=True)


def kept_line(pool: pd.DataFrame, kept: pd.DataFrame, *, min_margin: float, balance: bool) -> str:
    """What the selection did, in one line: 'kept 100 of 500 pairs: margin >= 0.25 nats both sides (212 qualify),
    balanced 50 changed / 50 unchanged'."""
    rules = []
    if min_margin > 0:
        rules.append(f"margin >= {min_margin:g} nats both sides ({int((pair_margin(pool) >= min_margin).sum())} qualify)")
    n_changed = int(kept["changed"].sum())
    rules.append(f"balanced {n_changed} changed / {len(kept) - n_changed} unchanged" if balance
                 else f"drawn at random with the seed ({n_changed} changed)")
    return f"kept {len(kept)} of {len(pool)} pairs: " + ", ".join(rules)
