"""Logits -> labelled probabilities, per head. numpy only (server, client-side checks, export)."""

from __future__ import annotations

import numpy as np

from genguard.specs import Head


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def head_probs(head: Head, logits: np.ndarray) -> np.ndarray:
    """[N, num_logits] logits -> [N, len(head.labels)] probabilities (sigmoid heads give [1-p, p])."""
    logits = np.asarray(logits, dtype=np.float64)
    if head.activation == "sigmoid":
        p = sigmoid(logits[:, 0])
        return np.stack([1.0 - p, p], axis=1)
    return softmax(logits)
