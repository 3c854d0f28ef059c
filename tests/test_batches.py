"""batches.py: the PK sampler and the training input pipeline."""
import argparse

import numpy as np
import pytest

import batches
import common
from conftest import write_dataset


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    return write_dataset(root, n_ids=13, per_id=5, noise=4), root


def test_pk_batches_composition():
    counts = [1, 2, 3, 4, 5, 9, 4, 6, 2, 7, 8]  # identities with fewer, as many, more than K
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    p, k = 3, 4
    per_epoch = len(counts) // p
    sampler = batches.pk_batches(labels, p, k, seed=1)
    uses = np.zeros(len(labels), int)
    for epoch in range(4):
        seen = []
        for _ in range(per_epoch):
            rows = next(sampler)
            assert rows.shape == (p * k,)
            groups = labels[rows].reshape(p, k)
            assert np.all(groups == groups[:, :1])  # K consecutive rows per identity
            assert len(set(groups[:, 0])) == p
            seen += list(groups[:, 0])
            for group in rows.reshape(p, k):
                n = counts[labels[group[0]]]
                used = np.bincount(group, minlength=len(labels))[group]
                if n >= k:
                    assert len(set(group)) == k  # without replacement
                else:
                    assert len(set(group)) == n  # every image, equally often
                    assert used.max() - used.min() <= 1
                uses[group] += 1
        assert len(seen) == len(set(seen)), f'identity repeated within epoch {epoch}'
    assert np.all(uses[np.isin(labels, np.flatnonzero(np.array(counts) < k))] > 0)


def test_pk_batches_are_deterministic_per_seed():
    labels = np.repeat(np.arange(10), 5)

    def first(seed):
        sampler = batches.pk_batches(labels, 4, 3, seed)
        return np.stack([next(sampler) for _ in range(6)])
    np.testing.assert_array_equal(first(3), first(3))
    assert not np.array_equal(first(3), first(4))


def test_dataset_batches_match_after_resume(dataset):
    csv, images = dataset
    pids, fids = common.load_dataset(csv)
    labels = np.unique(pids, return_inverse=True)[1].astype(np.int32)
    paths = np.array([str(images / fid) for fid in fids])
    args = argparse.Namespace(batch_p=4, batch_k=3, seed=7, net_input_height=32,
                              net_input_width=16, pre_crop_height=40, pre_crop_width=20,
                              crop_augment=True, flip_augment=True, loading_threads=2)
    from_start = list(batches.make_dataset(paths, labels, args, 0).take(5))
    resumed = list(batches.make_dataset(paths, labels, args, 3).take(2))
    for (im_a, lab_a, rows_a), (im_b, _, rows_b) in zip(from_start[3:], resumed, strict=True):
        np.testing.assert_array_equal(rows_a, rows_b)
        np.testing.assert_array_equal(im_a, im_b)
        np.testing.assert_array_equal(lab_a, labels[rows_a.numpy()])
    images_0 = from_start[0][0].numpy()
    assert images_0.shape == (12, 32, 16, 3) and images_0.dtype == np.float32
    assert 0 <= images_0.min() and images_0.max() <= 255
