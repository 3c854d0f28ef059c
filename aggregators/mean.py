"""The average over the augmentations: right for embeddings trained with a euclidean loss."""
import numpy as np


def aggregate(emb_aug: np.ndarray) -> np.ndarray:
    """(A, N, D) embeddings of A augmentations of N images -> (N, D) float32 means."""
    # Summing in float64 keeps the result independent of how NumPy orders the float32 sum.
    return np.asarray(emb_aug, np.float64).mean(axis=0).astype(np.float32)
