"""The average over the augmentations, scaled back to unit length.

For `_normalize` heads, whose embeddings live on the unit sphere: their plain mean is shorter
than 1, the more so the more the augmentations disagree.
"""
import numpy as np


def aggregate(emb_aug: np.ndarray) -> np.ndarray:
    """(A, N, D) embeddings -> (N, D) float32 rows of unit length (an all-zero mean stays zero
    instead of NaN)."""
    emb = np.asarray(emb_aug, np.float64).mean(axis=0)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return (emb / np.maximum(norm, 1e-12)).astype(np.float32)
