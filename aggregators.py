"""Ways to combine the test-time augmentations of an image into one embedding.

Each public function here is an aggregator that `embed.py --aggregator NAME` finds by name:

    aggregator(emb_aug) -> emb      emb_aug: (A, N, D) float, emb: (N, D) float32

A new aggregator is one new function in this file. NumPy only, so that it can be used on
stored `emb_aug` datasets without TensorFlow.
"""
import numpy as np


def mean(emb_aug: np.ndarray) -> np.ndarray:
    """The average over the augmentations: right for embeddings trained with a euclidean loss.

    Args:
        emb_aug: (A, N, D) embeddings of A augmentations of N images.

    Returns:
        (N, D) float32.
    """
    # Summing in float64 keeps the result independent of how NumPy orders the float32 sum.
    return np.asarray(emb_aug, np.float64).mean(axis=0).astype(np.float32)


def normalized_mean(emb_aug: np.ndarray) -> np.ndarray:
    """The average over the augmentations, scaled back to unit length.

    For `_normalize` heads, whose embeddings live on the unit sphere: their plain mean is
    shorter than 1, the more so the more the augmentations disagree.

    Args:
        emb_aug: (A, N, D) embeddings of A augmentations of N images.

    Returns:
        (N, D) float32 rows of unit length (an all-zero mean stays zero instead of NaN).
    """
    emb = np.asarray(emb_aug, np.float64).mean(axis=0)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return (emb / np.maximum(norm, 1e-12)).astype(np.float32)
