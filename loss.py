"""Distances and triplet losses, shared by train.py (TensorFlow) and evaluate.py (NumPy).

TensorFlow is imported on first use: evaluate.py only needs the NumPy path of `cdist` and
should not pay TensorFlow's ~3.5 s import on every call.
"""
import numpy as np

METRICS = ('euclidean', 'sqeuclidean', 'cityblock')


def cdist(a, b, metric: str = 'euclidean'):
    """All pairwise distances between the rows of `a` (M, D) and `b` (N, D): shape (M, N).

    metric: `euclidean` (sqrt of the squared distance + 1e-12, so that the gradient stays
    finite for identical embeddings), `sqeuclidean` or `cityblock`.

    TensorFlow tensors (training) use the exact difference form, cheap for a batch. NumPy
    arrays (evaluation, up to 20,000 x 200,000 pairs in query batches) are computed in
    float64, where the matrix-product form of the (squared) euclidean distance has no
    precision problem and is an order of magnitude faster than differences.
    """
    if metric not in METRICS:
        raise ValueError(f'unknown metric {metric!r}; choose from {", ".join(METRICS)}')
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return _cdist_numpy(a.astype(np.float64), b.astype(np.float64), metric)
    import tensorflow as tf
    diffs = a[:, None, :] - b[None, :, :]  # (M, N, D)
    if metric == 'cityblock':
        return tf.reduce_sum(tf.abs(diffs), axis=-1)
    squared = tf.reduce_sum(tf.square(diffs), axis=-1)
    return squared if metric == 'sqeuclidean' else tf.sqrt(squared + 1e-12)


def _cdist_numpy(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    if metric == 'cityblock':
        out = np.empty((len(a), len(b)))
        rows = max(1, 2**24 // max(1, b.size))  # bounds the (rows, N, D) temporary to 128 MiB
        for start in range(0, len(a), rows):
            out[start:start + rows] = np.abs(a[start:start + rows, None] - b[None]).sum(-1)
        return out
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    np.maximum(squared, 0.0, out=squared)  # rounding can make identical rows slightly negative
    return squared if metric == 'sqeuclidean' else np.sqrt(squared + 1e-12)
