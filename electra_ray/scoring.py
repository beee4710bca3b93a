"""Pure measures on arrays (numpy only): ranks, ROC-AUC, entropies. What evaluate's held-out
measurements and the regression metrics of labeled tasks (tasks.regression_metrics) are made of."""

from __future__ import annotations

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`; tied values share the average of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney U statistic: P(score of a positive > score of a negative), ties counted half."""
    labels = labels.astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_entropy(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def unigram_entropy(ids: np.ndarray) -> float:
    _, counts = np.unique(ids, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())
