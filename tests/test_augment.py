"""batches.py: random erasing's statistics and pad-and-crop, eagerly and inside tf.data."""
import numpy as np
import pytest
import tensorflow as tf

import batches

H, W, N = 64, 32, 600


def _erase_many(probability, in_dataset, count=N):
    """`count` erased copies of one noise image with seeds (7, i), and the image."""
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (H, W, 3)), tf.float32)
    seeds = tf.stack([tf.fill([count], tf.constant(7, tf.int64)),
                      tf.range(count, dtype=tf.int64)], 1)
    if in_dataset:
        dataset = tf.data.Dataset.from_tensor_slices(seeds).map(
            lambda seed: batches.random_erasing(image, seed, probability), num_parallel_calls=4)
        return np.stack(list(dataset.as_numpy_iterator())), image.numpy()
    return np.stack([batches.random_erasing(image, seed, probability).numpy()
                     for seed in seeds]), image.numpy()


@pytest.fixture(scope='module')
def erased():
    return _erase_many(0.5, in_dataset=True)


def test_random_erasing_statistics(erased):
    out, image = erased
    fill = np.array(batches.IMAGENET_MEAN, np.float32)
    changed = np.any(out != image, axis=3)  # (N, H, W)
    hit = changed.any(axis=(1, 2))
    # The share of erased images is near p: 3 standard deviations of a binomial.
    assert abs(hit.mean() - 0.5) < 3 * np.sqrt(0.25 / N)
    areas, aspects = [], []
    for n in np.flatnonzero(hit):
        rows, cols = np.flatnonzero(changed[n].any(1)), np.flatnonzero(changed[n].any(0))
        h, w = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w  # one rectangle
        assert changed[n].sum() == h * w
        block = out[n, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        np.testing.assert_array_equal(block, np.broadcast_to(fill, block.shape))  # the colour
        areas.append(h * w / (H * W))
        aspects.append(h / w)
    areas, aspects = np.array(areas), np.array(aspects)
    # Within the bounds up to rounding to whole pixels (half a pixel on each side).
    assert areas.min() >= 0.02 * 0.8 and areas.max() <= 0.4 * 1.1
    assert aspects.min() >= 0.3 * 0.8 and aspects.max() <= 3.34 * 1.25
    # Uniform areas in [0.02, 0.4] have mean 0.21; the ones that fit a 64x32 image lean smaller.
    assert 0.12 < areas.mean() < 0.25
    assert areas.max() > 0.3 and areas.min() < 0.05  # the whole range is used


def test_random_erasing_is_seeded_and_the_same_eagerly(erased):
    eager, image = _erase_many(0.5, in_dataset=False, count=12)
    np.testing.assert_array_equal(erased[0][:12], eager)
    assert len({out.tobytes() for out in eager}) > 5  # other seeds, other rectangles
    never, _ = _erase_many(0.0, in_dataset=True, count=50)
    assert np.all(never == image)


def test_pad_crop_shifts_by_up_to_the_padding():
    image = tf.constant(np.random.default_rng(1).integers(1, 256, (H, W, 3)), tf.float32)
    padded = np.pad(image.numpy(), [(10, 10), (10, 10), (0, 0)])
    seeds = tf.stack([tf.fill([150], tf.constant(3, tf.int64)), tf.range(150, dtype=tf.int64)], 1)
    dataset = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda seed: batches.pad_crop(image, 10, seed))
    outs = np.stack(list(dataset.as_numpy_iterator()))
    np.testing.assert_array_equal(outs[0], batches.pad_crop(image, 10, seeds[0]).numpy())
    offsets = set()
    for out in outs:  # each crop is the padded image at exactly one offset
        found = [(row, col) for row in range(21) for col in range(21)
                 if out[0, 0, 0] == padded[row, col, 0]
                 and np.array_equal(padded[row:row + H, col:col + W], out)]
        assert len(found) == 1
        offsets.add(found[0])
    rows, cols = zip(*offsets, strict=True)
    assert min(rows) <= 1 and max(rows) >= 19 and min(cols) <= 1 and max(cols) >= 19
