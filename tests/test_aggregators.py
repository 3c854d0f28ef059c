"""aggregators/: every aggregator against a NumPy computation written out here."""
import numpy as np
import pytest

from model import import_plugin, plugin_names

NAMES = plugin_names('aggregators')


def aggregate(name: str, emb_aug: np.ndarray) -> np.ndarray:
    return import_plugin('aggregators', name).aggregate(emb_aug)


def emb_aug(a: int = 10, n: int = 7, d: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(a, n, d)).astype(np.float32)


# A unit vector's norm from D = 5 float32 terms is off by at most D + 3 roundings: below 8 eps.
EPS32 = np.finfo(np.float32).eps


def sum_tolerance(x: np.ndarray) -> float:
    """Bound on the float32 error of a mean over axis 0 of (A, N, D): a sum of A terms in any
    order is off by at most (A - 1) u sum |x_a| <= A u A max |x|, divided by A."""
    return len(x) * EPS32 / 2 * np.abs(x).max()


def test_the_2017_aggregators_exist():
    assert {'mean', 'normalized_mean'} <= set(NAMES)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('a', [1, 2, 10])
def test_shape_dtype_and_finite(name, a):
    out = aggregate(name, emb_aug(a))
    assert out.shape == (7, 5)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize('name', NAMES)
def test_rows_are_independent_and_keep_their_order(name):
    # Row i of the result depends on row i of each augmentation only.
    x = emb_aug()
    out = aggregate(name, x)
    perm = np.random.default_rng(1).permutation(x.shape[1])
    np.testing.assert_array_equal(aggregate(name, x[:, perm]), out[perm])
    np.testing.assert_array_equal(aggregate(name, x[:, 2:3]), out[2:3])


@pytest.mark.parametrize('name', NAMES)
def test_order_of_augmentations_does_not_matter(name):
    x = emb_aug()
    np.testing.assert_allclose(aggregate(name, x[::-1]), aggregate(name, x),
                               rtol=0, atol=sum_tolerance(x))


def test_mean_against_numpy():
    x = emb_aug()
    want = sum(x[k].astype(np.float64) for k in range(len(x))) / len(x)
    np.testing.assert_allclose(aggregate('mean', x), want, rtol=0, atol=sum_tolerance(x))


def test_mean_of_one_augmentation_is_itself():
    x = emb_aug(1)
    np.testing.assert_array_equal(aggregate('mean', x), x[0])


def test_normalized_mean_against_numpy():
    x = emb_aug()
    mean = x.astype(np.float64).mean(axis=0)
    want = mean / np.sqrt((mean ** 2).sum(axis=1, keepdims=True))
    out = aggregate('normalized_mean', x)
    # Dividing by the norm can enlarge the mean's error by 1 / its norm.
    norms = np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(out, want, rtol=0, atol=sum_tolerance(x) / norms.min())
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=0, atol=8 * EPS32)


def test_normalized_mean_differs_from_mean_on_unit_vectors():
    # The mean of unit vectors pointing in different directions is shorter than 1: the reason
    # normalized_mean exists.
    x = emb_aug()
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    assert (np.linalg.norm(aggregate('mean', x), axis=1) < 0.99).all()
    np.testing.assert_allclose(np.linalg.norm(aggregate('normalized_mean', x), axis=1), 1.0,
                               rtol=0, atol=8 * EPS32)


def test_normalized_mean_of_a_zero_mean_is_zero_not_nan():
    x = np.stack([np.ones((2, 3)), -np.ones((2, 3))]).astype(np.float32)
    np.testing.assert_array_equal(aggregate('normalized_mean', x), np.zeros((2, 3)))
