"""95% intervals over held-out prompts: the percentile bootstrap of a ratio of per-prompt sums, alone and paired.

A demo measure is a ratio of sums over held-out prompts: accuracy = correct answers / answers, the informative-token
loss = summed token losses / tokens. Resampling *prompts* (not tokens) keeps a prompt's tokens together, and a paired
bootstrap resamples the same prompts for both methods, so the interval of a difference shows whether it could come
from which prompts happened to be held out. Over several seeds, a prompt's numerators and denominators are summed
over the seeds first: the interval then covers the prompts, with the training randomness averaged in.
numpy's own percentile bootstrap, written here because scipy (``scipy.stats.bootstrap``) is not a dependency.
"""

from __future__ import annotations

import numpy as np

N_RESAMPLES = 2000
LEVEL = 0.95


def _resampled_ratios(num: np.ndarray, den: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(resamples,) sum(num[rows]) / sum(den[rows]) for each row of ``index`` (resamples, prompts)."""
    return num[index].sum(1) / np.maximum(den[index].sum(1), 1e-12)


def _index(n: int, seed: int, resamples: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def ratio_interval(num: np.ndarray, den: np.ndarray, seed: int = 0, resamples: int = N_RESAMPLES,
                   level: float = LEVEL) -> dict[str, float]:
    """``value`` = sum(num) / sum(den) and its percentile-bootstrap interval ``lo``, ``hi`` over prompts.

    ``num``, ``den``: (prompts,) per-prompt sums (e.g. correct answers and answers; token losses and tokens).

    >>> r = ratio_interval(np.array([1.0, 0.0, 1.0, 1.0]), np.ones(4))
    >>> r["value"], r["lo"] <= r["value"] <= r["hi"]
    (0.75, True)
    """
    num, den = np.asarray(num, float), np.asarray(den, float)
    ratios = _resampled_ratios(num, den, _index(len(num), seed, resamples))
    tail = (1 - level) / 2
    return {"value": float(num.sum() / den.sum()), "lo": float(np.quantile(ratios, tail)),
            "hi": float(np.quantile(ratios, 1 - tail))}


def paired_interval(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], seed: int = 0,
                    resamples: int = N_RESAMPLES, level: float = LEVEL) -> dict[str, float]:
    """The difference ratio(a) - ratio(b) over the same prompts, with its paired percentile-bootstrap interval
    (``diff``, ``lo``, ``hi``) and ``share_below``: the share of resamples in which the difference is < 0.

    ``a``, ``b``: (num, den) per prompt, each (prompts,), the prompts in the same order.
    """
    (an, ad), (bn, bd) = ((np.asarray(x, float), np.asarray(y, float)) for x, y in (a, b))
    if len(an) != len(bn):
        raise ValueError(f"paired intervals need the same prompts: {len(an)} against {len(bn)}")
    index = _index(len(an), seed, resamples)
    diffs = _resampled_ratios(an, ad, index) - _resampled_ratios(bn, bd, index)
    tail = (1 - level) / 2
    return {"diff": float(an.sum() / ad.sum() - bn.sum() / bd.sum()), "lo": float(np.quantile(diffs, tail)),
            "hi": float(np.quantile(diffs, 1 - tail)), "share_below": float(np.mean(diffs < 0))}
