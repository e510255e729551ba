"""Inception Score from any classifier's class probabilities (Salimans et al. 2016)."""

from __future__ import annotations

import numpy as np


def inception_score(probs: np.ndarray, splits: int = 1, eps: float = 1e-12) -> float:
    """IS = exp(E_x KL(p(y|x) || p(y))), averaged over ``splits`` equal chunks (ADM: mean).

    probs: (N, K) rows of class probabilities (softmax outputs). Uniform predictions give 1;
    confident one-hot predictions spread evenly over K classes give K.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be (N, K) with N >= 1, got shape {p.shape}")
    if np.any(p < -1e-6) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs rows must be probability vectors (softmax outputs), not logits")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be in 1..N={p.shape[0]}, got {splits}")
    scores = []
    for chunk in np.array_split(p, splits):
        py = chunk.mean(axis=0, keepdims=True)
        kl = np.sum(chunk * (np.log(chunk + eps) - np.log(py + eps)), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))
