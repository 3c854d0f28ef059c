"""loss.py: the triplet losses and batch metrics against plain NumPy loops, values and gradients."""
import itertools
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

import loss
from conftest import ROOT

MARGINS = (0.0, 0.3, 'soft', 'none')


def np_dists(emb, metric):
    if metric == 'cosine':
        units = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        return 1 - units @ units.T
    diffs = emb[:, None] - emb[None]
    if metric == 'cityblock':
        return np.abs(diffs).sum(-1)
    squared = (diffs ** 2).sum(-1)
    return squared if metric == 'sqeuclidean' else np.sqrt(squared + 1e-12)


def np_margin(x, margin):
    if margin == 'soft':
        return np.log1p(np.exp(x))
    if margin == 'none':
        return x
    return max(x + margin, 0.0)


def np_losses(emb, pids, metric, loss_name, margin):
    """Per-anchor losses written as loops over the definition."""
    dists = np_dists(emb, metric)
    n = len(pids)
    out = np.zeros(n)
    for a in range(n):
        pos = [p for p in range(n) if p != a and pids[p] == pids[a]]
        neg = [q for q in range(n) if pids[q] != pids[a]]
        if loss_name == 'batch_hard':
            out[a] = np_margin(max(dists[a, pos]) - min(dists[a, neg]), margin)
        else:
            triplets = [np_margin(dists[a, p] - dists[a, q], margin)
                        for p, q in itertools.product(pos, neg)]
            out[a] = np.mean(triplets)
    return out


def pk_pids(p=4, k=3):
    return np.repeat(np.arange(p), k)


def tf_losses(emb, pids, metric, loss_name, margin, compiled):
    fn = getattr(loss, loss_name)

    def compute(e, y):
        return fn(loss.cdist(e, e, metric), y, margin)
    if compiled:
        compute = tf.function(compute)
    return compute(emb, pids)


@pytest.mark.parametrize('compiled', [False, True], ids=['eager', 'tf.function'])
@pytest.mark.parametrize('metric', loss.METRICS)
@pytest.mark.parametrize('margin', MARGINS)
@pytest.mark.parametrize('loss_name', loss.LOSSES)
def test_loss_values_and_gradients(loss_name, margin, metric, compiled):
    # crc32, not hash(): str hashes change per process (PYTHONHASHSEED).
    rng = np.random.default_rng(zlib.crc32(f'{loss_name} {margin} {metric}'.encode()))
    pids = pk_pids()
    emb = rng.normal(size=(len(pids), 5))
    expected = np_losses(emb, pids, metric, loss_name, margin)

    emb_t = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(emb_t)
        losses = tf_losses(emb_t, tf.constant(pids), metric, loss_name, margin, compiled)
        total = tf.reduce_mean(losses)
    assert losses.shape == (len(pids),)
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-6, atol=1e-9)

    # Central differences of the NumPy loss: the gradient of the mean loss.
    grad = tape.gradient(total, emb_t).numpy()
    numeric = np.zeros_like(emb)
    step = 1e-6
    for index in np.ndindex(emb.shape):
        plus, minus = emb.copy(), emb.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (np_losses(plus, pids, metric, loss_name, margin).mean()
                          - np_losses(minus, pids, metric, loss_name, margin).mean()) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('metric', loss.METRICS)
@pytest.mark.parametrize('margin', MARGINS)
@pytest.mark.parametrize('loss_name', loss.LOSSES)
def test_identical_embeddings_have_finite_gradients(loss_name, margin, metric):
    pids = pk_pids()
    emb = tf.ones((len(pids), 4))
    with tf.GradientTape() as tape:
        tape.watch(emb)
        total = tf.reduce_mean(tf_losses(emb, tf.constant(pids), metric, loss_name, margin,
                                         compiled=False))
    grad = tape.gradient(total, emb).numpy()
    assert np.isfinite(total.numpy())
    assert np.all(np.isfinite(grad))
    if margin == 'soft':
        assert total.numpy() == pytest.approx(np.log(2.0))  # the collapsed value train.py watches


def test_batch_all_is_mean_over_all_valid_triplets():
    rng = np.random.default_rng(3)
    pids = pk_pids(3, 4)
    emb = rng.normal(size=(len(pids), 3))
    dists = np_dists(emb, 'euclidean')
    triplets = [np_margin(dists[a, p] - dists[a, n], 0.5)
                for a, p, n in itertools.product(range(len(pids)), repeat=3)
                if a != p and pids[a] == pids[p] and pids[a] != pids[n]]
    losses = loss.batch_all(tf.constant(dists), tf.constant(pids), 0.5).numpy()
    assert losses.mean() == pytest.approx(np.mean(triplets))


def np_metrics(dists, pids, losses):
    n = len(pids)
    top1, prec = np.zeros(n), np.zeros(n)
    pos_d, neg_d = [], []
    for a in range(n):
        others = sorted((dists[a, j], j) for j in range(n) if j != a)
        n_pos = sum(pids[j] == pids[a] for j in range(n) if j != a)
        top1[a] = pids[others[0][1]] == pids[a]
        prec[a] = np.mean([pids[j] == pids[a] for _, j in others[:n_pos]])
        pos_d += [dists[a, j] for j in range(n) if j != a and pids[j] == pids[a]]
        neg_d += [dists[a, j] for j in range(n) if pids[j] != pids[a]]
    active = np.sum(losses > 1e-5)
    return top1, prec, active, np.sort(pos_d), np.sort(neg_d)


@pytest.mark.parametrize('compiled', [False, True], ids=['eager', 'tf.function'])
@pytest.mark.parametrize('metric', loss.METRICS)
def test_batch_metrics(metric, compiled):
    rng = np.random.default_rng(7)
    pids = pk_pids(5, 3)
    # Identities as clusters, some close enough to confuse, so that the metrics are not all 1.
    emb = rng.normal(size=(5, 4))[pids] + rng.normal(scale=0.8, size=(len(pids), 4))
    dists = np_dists(emb, metric)
    losses = np_losses(emb, pids, metric, 'batch_hard', 0.2)
    fn = tf.function(loss.batch_metrics) if compiled else loss.batch_metrics
    out = fn(tf.constant(dists), tf.constant(pids), tf.constant(losses))
    top1, prec, active, pos_d, neg_d = np_metrics(dists, pids, losses)
    assert 0 < top1.mean() < 1 and 0 < prec.mean() < 1  # the test data is not trivial
    np.testing.assert_array_equal(out['top1'].numpy(), top1)
    np.testing.assert_allclose(out['prec_at_k'].numpy(), prec)
    assert out['active'].numpy() == active
    assert out['active_fraction'].numpy() == pytest.approx(active / len(pids))
    np.testing.assert_allclose(np.sort(out['pos_dists'].numpy()), pos_d)
    np.testing.assert_allclose(np.sort(out['neg_dists'].numpy()), neg_d)


def test_duplicate_image_does_not_shadow_the_anchor():
    # Two identical embeddings of one identity: each is the other's nearest neighbour (top-1).
    pids = np.array([0, 0, 1, 1])
    emb = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [5.0, 1.0]])
    dists = np_dists(emb, 'euclidean')
    out = loss.batch_metrics(tf.constant(dists), tf.constant(pids), tf.zeros(4, tf.float64))
    np.testing.assert_array_equal(out['top1'].numpy(), [1, 1, 1, 1])


def test_unknown_margin_is_refused():
    with pytest.raises(ValueError, match='hard'):
        loss.batch_hard(tf.zeros((4, 4)), tf.constant([0, 0, 1, 1]), 'hard')


def test_importing_loss_does_not_import_tensorflow():
    code = 'import sys, loss; print("tensorflow" in sys.modules)'
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == 'False'


# ----------------------------------------------------------------------------- cosine
def test_cosine_numpy_and_tensorflow_agree_and_handle_zero_rows():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    b[2] = 0  # a zero row: distance 1 to everything, not NaN
    units_a = a / np.linalg.norm(a, axis=1, keepdims=True)
    units_b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    expected = 1 - units_a @ units_b.T
    np.testing.assert_allclose(loss.cdist(a, b, 'cosine'), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(loss.cdist(tf.constant(a), tf.constant(b), 'cosine').numpy(),
                               expected, rtol=1e-12, atol=1e-15)
    assert np.all(loss.cdist(a, b, 'cosine')[:, 2] == 1)


# ----------------------------------------------------------------------------- ID and center losses
def test_label_smoothing_matches_the_formula():
    rng = np.random.default_rng(5)
    logits, labels = rng.normal(scale=3, size=(6, 7)), rng.integers(0, 7, 6)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for eps in (0.0, 0.1, 0.5):
        q = np.full((6, 7), eps / 7)
        q[np.arange(6), labels] = 1 - eps + eps / 7
        expected = -(q * np.log(p)).sum(1)
        for fn in (loss.id_loss, tf.function(loss.id_loss)):
            got = fn(tf.constant(logits), tf.constant(labels), eps).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-12)
    # eps 0 is Keras' plain cross-entropy.
    plain = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    np.testing.assert_allclose(loss.id_loss(tf.constant(logits), tf.constant(labels)).numpy(),
                               plain.numpy(), rtol=1e-10)


def test_center_loss_and_update_match_the_formulas():
    rng = np.random.default_rng(6)
    labels = np.array([0, 0, 0, 2, 2, 3])  # class 1 not in the batch: its centre stays
    f, c = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    expected = 0.5 * ((f - c[labels]) ** 2).sum(1)
    f_t = tf.constant(f)
    with tf.GradientTape() as tape:
        tape.watch(f_t)
        values = loss.center_loss(f_t, tf.constant(labels), tf.constant(c))
        total = tf.reduce_sum(values)
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(total, f_t).numpy(), f - c[labels], rtol=1e-12)
    lr = 0.5
    want = c.copy()
    for k in range(5):  # Wen et al.'s eq. 4, class by class
        mine = labels == k
        want[k] -= lr * (c[k] - f[mine]).sum(0) / (1 + mine.sum())
    for fn in (loss.center_update, tf.function(loss.center_update)):
        got = fn(tf.constant(f), tf.constant(labels), tf.constant(c), lr).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_array_equal(got[[1, 4]], c[[1, 4]])
