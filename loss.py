"""Distances and losses (triplet, ID, center), shared by training (TensorFlow) and evaluate.py
(NumPy).

TensorFlow is imported on first use: evaluate.py only needs the NumPy path of `cdist` and
should not pay TensorFlow's ~3.5 s import on every call.
"""
import numpy as np

import common

METRICS = ('euclidean', 'sqeuclidean', 'cityblock', 'cosine')
# Norms below this count as this, so that the cosine distance of a zero vector is defined (1).
COSINE_FLOOR = 1e-12


def cdist(a, b, metric: str = 'euclidean'):
    """All pairwise distances between the rows of `a` (M, D) and `b` (N, D): shape (M, N).

    metric: `euclidean` (sqrt of the squared distance + 1e-12, so that the gradient stays
    finite for identical embeddings), `sqeuclidean`, `cityblock` or `cosine` (1 - a.b / (|a| |b|),
    in [0, 2]; the inference metric of BNNeck features).

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
    if metric == 'cosine':  # l2_normalize's gradient is finite at 0, unlike tf.norm's
        def unit(x):
            return tf.math.l2_normalize(x, axis=1, epsilon=COSINE_FLOOR ** 2)
        return 1.0 - tf.matmul(unit(a), unit(b), transpose_b=True)
    diffs = a[:, None, :] - b[None, :, :]  # (M, N, D)
    if metric == 'cityblock':
        return tf.reduce_sum(tf.abs(diffs), axis=-1)
    squared = tf.reduce_sum(tf.square(diffs), axis=-1)
    return squared if metric == 'sqeuclidean' else tf.sqrt(squared + 1e-12)


def _cdist_numpy(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    return cdist_to(b, metric)(a)


def cdist_to(b: np.ndarray, metric: str = 'euclidean', clamp: bool = True):
    """The NumPy `cdist(., b, metric)` as a function of `a`, with b's part prepared once.

    Evaluation calls it for many query batches against one large gallery: preparing the
    gallery's (N, D + 2) float64 matrix once saves a pass over it per batch.

    clamp: False leaves squared distances that rounding made slightly negative as they are,
    for a caller that clamps the few entries it uses (`sqeuclidean` only).
    """
    b = np.asarray(b, np.float64)
    if metric == 'cosine':
        right = unit_rows(b).T

        def distances(a):
            return 1.0 - unit_rows(np.asarray(a, np.float64)) @ right
        return distances
    if metric == 'cityblock':
        def distances(a):
            a = np.asarray(a, np.float64)
            out = np.empty((len(a), len(b)))
            rows = max(1, 2**24 // max(1, b.size))  # bounds the (rows, N, D) temporary: 128 MiB
            for start in range(0, len(a), rows):
                out[start:start + rows] = np.abs(a[start:start + rows, None] - b[None]).sum(-1)
            return out
        return distances
    # One matrix product gives |a|^2 + |b|^2 - 2ab, leaving few passes over the (M, N) result,
    # the largest array of an evaluation. Integer embeddings stay exact, so their ties are
    # ties whichever way the product is blocked.
    right = np.hstack([b, np.ones((len(b), 1)), (b * b).sum(1, keepdims=True)]).T

    def distances(a):
        a = np.asarray(a, np.float64)
        squared = np.hstack([-2.0 * a, (a * a).sum(1, keepdims=True), np.ones((len(a), 1))]) @ right
        if metric == 'sqeuclidean' and not clamp:
            return squared
        np.maximum(squared, 0.0, out=squared)  # rounding can make identical rows slightly negative
        if metric == 'sqeuclidean':
            return squared
        squared += 1e-12
        return np.sqrt(squared, out=squared)
    return distances


def unit_rows(x: np.ndarray) -> np.ndarray:
    """The rows of `x` (N, D) divided by their norms (at least COSINE_FLOOR), for `cosine`."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), COSINE_FLOOR)


# ----------------------------------------------------------------------------- triplet losses
# The losses take the (B, B) distance matrix of a batch and the (B,) identity labels and return
# one value per anchor (B,), so that the training log can show min/mean/max; the training
# objective is their mean.
LOSSES = ('batch_hard', 'batch_all')
MARGINS = ('soft', 'none')


def _masks(pids):
    """Positive (same identity, not the anchor itself) and negative masks, both (B, B) bool."""
    import tensorflow as tf
    same = tf.equal(pids[:, None], pids[None, :])
    positive = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(pids)[0], dtype=tf.bool)))
    return positive, tf.logical_not(same)


def _apply_margin(diff, margin):
    """Turns d_pos - d_neg (any shape) into the loss for a float margin, `soft` or `none`."""
    import tensorflow as tf
    if margin == 'soft':
        return tf.nn.softplus(diff)
    if margin == 'none':
        return diff
    if isinstance(margin, str):
        raise ValueError(f'unknown margin {margin!r}; use a number, soft or none')
    return tf.maximum(diff + float(margin), 0.0)


def batch_hard(dists, pids, margin='soft'):
    """The batch-hard triplet loss of Hermans, Beyer and Leibe (2017), one value per anchor.

    For each anchor, the hardest positive is the farthest other sample of the same identity
    and the hardest negative the closest sample of a different identity.

    Args:
        dists: (B, B) float distances, e.g. `cdist(emb, emb)`.
        pids: (B,) identity labels (any dtype that compares with ==).
        margin: a float m -> max(d_pos - d_neg + m, 0); `soft` -> softplus(d_pos - d_neg);
            `none` -> d_pos - d_neg.

    Returns:
        (B,) float losses. An anchor without a positive gets d_pos = 0; without a negative,
        d_neg = the largest distance of the batch (PK batches with P, K >= 2 have both).
    """
    import tensorflow as tf
    positive, negative = _masks(pids)
    zeros = tf.zeros_like(dists)
    # Filling with the batch's largest distance (not inf) keeps the min unchanged when there
    # are negatives, and the value finite when there are none. No gradient flows to a filler.
    far = tf.fill(tf.shape(dists), tf.stop_gradient(tf.reduce_max(dists)))
    hardest_pos = tf.reduce_max(tf.where(positive, dists, zeros), axis=1)  # (B,)
    hardest_neg = tf.reduce_min(tf.where(negative, dists, far), axis=1)  # (B,)
    return _apply_margin(hardest_pos - hardest_neg, margin)


def batch_all(dists, pids, margin='soft'):
    """The batch-all triplet loss (the paper's "BA"), one value per anchor.

    Every valid triplet of the batch counts: anchor a, a positive p (same identity, p != a)
    and a negative n (different identity). Anchor a's value is the mean loss over its
    triplets, so in a PK batch (every anchor has (K-1)(B-K) triplets) the mean over anchors
    is exactly the mean over all valid triplets of the batch. We average over all valid
    triplets rather than only the active (non-zero) ones ("BA!=0" in the paper) because it
    is the plain definition and stays smooth: with a hard margin the average over active
    triplets jumps whenever a triplet becomes inactive.

    Args:
        dists: (B, B) float distances.
        pids: (B,) identity labels.
        margin: a float, `soft` or `none`, as for `batch_hard`.

    Returns:
        (B,) float losses; an anchor without any valid triplet gets 0.
    """
    import tensorflow as tf
    positive, negative = _masks(pids)
    valid = tf.logical_and(positive[:, :, None], negative[:, None, :])  # (B, B_pos, B_neg)
    diff = dists[:, :, None] - dists[:, None, :]  # d(a, p) - d(a, n), (B, B, B)
    losses = tf.where(valid, _apply_margin(diff, margin), tf.zeros_like(diff))
    count = tf.reduce_sum(tf.cast(valid, dists.dtype), axis=[1, 2])
    return tf.reduce_sum(losses, axis=[1, 2]) / tf.maximum(count, 1.0)


def batch_metrics(dists, pids, losses) -> dict:
    """What the training log and TensorBoard show about a batch.

    Args:
        dists: (B, B) distances.
        pids: (B,) identity labels.
        losses: (B,) per-anchor losses of `batch_hard` or `batch_all`.

    Returns:
        dict of
        `top1` (B,) float: 1 where the nearest other sample has the anchor's identity;
        `prec_at_k` (B,) float: the fraction of the anchor's n_pos nearest other samples that
            share its identity, n_pos being its number of positives (K-1 in a PK batch);
        `active` () float: how many anchors have a loss above 1e-5 (with a soft margin
            nearly all always do); `active_fraction` () float: the same divided by B;
        `pos_dists` (n,) and `neg_dists` (m,): the distances of all positive and all
            negative pairs, for histograms.
    """
    import tensorflow as tf
    positive, negative = _masks(pids)
    batch = tf.shape(dists)[0]
    # The anchor itself is moved last with +inf and dropped, rather than dropping the first
    # column: another sample at distance 0 (a duplicate image) could sort before it.
    inf = tf.fill(tf.shape(dists), tf.constant(np.inf, dists.dtype))
    others = tf.where(tf.eye(batch, dtype=tf.bool), inf, dists)
    order = tf.argsort(others, axis=1, stable=True)[:, :-1]  # (B, B-1), nearest first
    hits = tf.cast(tf.gather(positive, order, batch_dims=1), dists.dtype)  # (B, B-1)
    n_pos = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)  # (B,)
    ranks = tf.range(tf.shape(order)[1])[None, :]
    within = tf.cast(ranks < n_pos[:, None], dists.dtype)
    prec = tf.reduce_sum(hits * within, axis=1) / tf.maximum(tf.cast(n_pos, dists.dtype), 1.0)
    active = tf.reduce_sum(tf.cast(losses > 1e-5, dists.dtype))
    return {
        'top1': hits[:, 0],
        'prec_at_k': prec,
        'active': active,
        'active_fraction': active / tf.cast(batch, dists.dtype),
        'pos_dists': tf.boolean_mask(dists, positive),
        'neg_dists': tf.boolean_mask(dists, negative),
    }


# ----------------------------------------------------------------------------- ID and center losses
def add_flags(group) -> None:
    """Adds train.py's flags of the objective beside the triplet loss (the strong baseline's
    ID and center losses, weight decay) to an argparse group; all off by default."""
    group.add_argument('--id_loss_weight', default=0.0, type=common.float_in(0),
                       help='Weight of the ID loss, the cross-entropy of the head\'s identity '
                            'classifier (--head_name bnneck); 0: off (the strong baseline: 1).')
    group.add_argument('--label_smoothing', default=0.0, type=common.float_in(0, 1, False),
                       help='Label smoothing eps of the ID loss: targets 1 - eps + eps/N and '
                            'eps/N (the strong baseline: 0.1).')
    group.add_argument('--center_loss_weight', default=0.0, type=common.float_in(0),
                       help='Weight beta of the center loss 1/2 sum_j |f_j - c_{y_j}|^2 over the '
                            'batch; 0: off (the strong baseline: 0.0005).')
    group.add_argument('--center_lr', default=0.5, type=common.positive_float,
                       help='Learning rate of the centres\' own update (Wen et al.).')
    group.add_argument('--weight_decay', default=0.0, type=common.float_in(0),
                       help='L2 weight decay: adds wd/2 |w|^2 of every convolution and dense '
                            'kernel to the loss (not batch norm, biases, GeM); 0: off (the strong '
                            'baseline: 5e-4).')
    group.add_argument('--weight_decay_all', action='store_true', default=False,
                       help='Apply --weight_decay to every trained variable, batch norm and '
                            'biases too (as the strong baseline\'s published code does).')


def id_loss(logits, labels, label_smoothing: float = 0.0):
    """Cross-entropy of the identity classifier with label smoothing, one value per sample.

    Szegedy et al. 2016, as Luo et al.'s strong baseline uses it: the target of a sample of
    class y among N is q_i = 1 - eps + eps / N for i = y and eps / N otherwise, and the loss
    is -sum_i q_i log p_i with p = softmax(logits). eps = 0 is the plain cross-entropy.
    Computed from log_softmax, which stays finite for any logits.

    Args:
        logits: (B, N) float.
        labels: (B,) int class in [0, N).
        label_smoothing: eps in [0, 1).

    Returns:
        (B,) float losses.
    """
    import tensorflow as tf
    classes = tf.shape(logits)[-1]
    log_p = tf.nn.log_softmax(logits, axis=-1)  # (B, N)
    eps = tf.constant(label_smoothing, logits.dtype)
    targets = (1.0 - eps) * tf.one_hot(labels, classes, dtype=logits.dtype) + eps / tf.cast(
        classes, logits.dtype)
    return -tf.reduce_sum(targets * log_p, axis=-1)


def center_loss(embs, labels, centres):
    """The center loss of Wen et al. (ECCV 2016), one value per sample: 1/2 |f_j - c_{y_j}|^2.

    The objective is their sum over the batch (Luo et al.'s eq. 6, weighted by beta = 0.0005
    there). The reference code of the strong baseline divides the sum of |f_j - c_{y_j}|^2 by
    the batch size instead of 2: at the paper's B = 64 its loss is 32x weaker than the formula
    for the same beta. We follow the formula (README). The centres get no gradient from it:
    they move by center_update.

    Args:
        embs: (B, D) float, the features f_j (BNNeck: before its batch norm).
        labels: (B,) int class in [0, N).
        centres: (N, D) float, c.

    Returns:
        (B,) float.
    """
    import tensorflow as tf
    own = tf.stop_gradient(tf.gather(centres, labels))  # (B, D)
    return 0.5 * tf.reduce_sum(tf.square(embs - own), axis=1)


def center_update(embs, labels, centres, learning_rate: float):
    """The centres after one step of the center loss's own update (Wen et al., eq. 4).

    Each centre c_k moves towards the batch's features of class k: c_k -= lr * delta_k with
    delta_k = sum_{j: y_j = k} (c_k - f_j) / (1 + n_k), n_k the samples of class k in the batch
    (classes not in the batch stay). This is SGD on 1/2 sum_j |f_j - c_{y_j}|^2 with the
    gradient of c_k divided by 1 + n_k: plain SGD at the paper's lr 0.5 would jump each centre
    past its class's mean (by 2x with K = 4) and oscillate. Luo et al.'s code takes plain SGD
    on its batch-mean loss instead (a step of lr * 2 n_k / B towards the mean).

    Args:
        embs: (B, D) float features (no gradient flows through the update).
        labels: (B,) int class in [0, N).
        centres: (N, D) float.
        learning_rate: alpha, --center_lr.

    Returns:
        (N, D) the new centres.
    """
    import tensorflow as tf
    embs = tf.stop_gradient(embs)
    classes = tf.shape(centres)[0]
    sums = tf.math.unsorted_segment_sum(embs, labels, classes)  # (N, D): sum of f_j per class
    counts = tf.math.unsorted_segment_sum(tf.ones_like(labels, embs.dtype), labels, classes)
    delta = (counts[:, None] * centres - sums) / (1.0 + counts[:, None])
    return centres - learning_rate * delta
