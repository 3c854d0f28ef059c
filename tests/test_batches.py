"""batches.py: the PK sampler and the training input pipeline."""
import argparse

import numpy as np
import pytest

import batches
import common
from conftest import write_dataset


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """(paths, labels) of a small training set, as batches.load_training_data gives them."""
    root = tmp_path_factory.mktemp('data')
    pids, fids = common.load_dataset(write_dataset(root, n_ids=13, per_id=5, noise=4))
    labels = np.unique(pids, return_inverse=True)[1].astype(np.int32)
    return np.array([str(root / fid) for fid in fids]), labels


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
    paths, labels = dataset
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


def test_frames_per_tracklet_spreads_an_identity_over_its_tracklets():
    # Identity 0: 5 tracklets of 1, 2, 3, 6 and 9 frames; identity 1: 2 tracklets of 3 frames;
    # identities 2 and 3: one tracklet each.
    sizes = {0: [1, 2, 3, 6, 9], 1: [3, 3], 2: [4], 3: [7]}
    labels = np.concatenate([np.full(sum(s), pid) for pid, s in sizes.items()])
    tracklets = np.concatenate([np.repeat(np.arange(len(s)) + 10 * pid, s)
                                for pid, s in sizes.items()])
    order = np.random.default_rng(0).permutation(len(labels))  # rows in no particular order
    labels, tracklets = labels[order], tracklets[order]
    sampler = batches.pk_batches(labels, 4, 4, seed=2, tracklets=tracklets, frames_per_tracklet=1)
    for _ in range(20):
        groups = next(sampler).reshape(4, 4)
        for rows in groups:
            pid = labels[rows[0]]
            assert np.all(labels[rows] == pid)
            per_tracklet = np.unique(tracklets[rows], return_counts=True)[1]
            if pid == 0:  # 5 tracklets for K=4: four different ones, each frame once
                assert len(per_tracklet) == 4 and len(set(rows)) == 4
            elif pid == 1:  # 2 tracklets: two rounds, 2 distinct frames of each
                assert list(per_tracklet) == [2, 2]
                assert len(set(rows)) == 4
    # F=2: at most two frames of one tracklet
    sampler = batches.pk_batches(labels, 4, 4, seed=2, tracklets=tracklets, frames_per_tracklet=2)
    for _ in range(20):
        for rows in next(sampler).reshape(4, 4):
            if labels[rows[0]] == 0:
                assert np.unique(tracklets[rows], return_counts=True)[1].max() <= 2


def test_tracklet_labels_from_mars_names_else_folders():
    fids = np.array(['bbox_train/0001/0001C1T0001F001.jpg', 'bbox_train/0001/0001C1T0001F002.jpg',
                     'bbox_train/0001/0001C1T0002F001.jpg', 'bbox_train/0001/0001C2T0001F001.jpg',
                     'train/0002/0007/0007_C1_F0001_X00001.jpg',
                     'train/0002/0007/0007_C1_F0002_X00001.jpg',
                     'train/0002/0008/0008_C1_F0001_X00001.jpg'])
    labels = batches.tracklet_labels(fids)
    assert labels[0] == labels[1] and labels[4] == labels[5]
    assert len(set(labels[[0, 2, 3, 4, 6]])) == 5


def test_the_pipeline_samples_by_tracklet_when_asked(dataset):
    paths, labels = dataset
    args = argparse.Namespace(batch_p=4, batch_k=3, seed=7, net_input_height=32,
                              net_input_width=16, crop_augment=False, flip_augment=False,
                              loading_threads=2, frames_per_tracklet=1)
    # One folder: one tracklet per identity, so each round takes one frame of it.
    sampler = batches.pk_batches(labels, 4, 3, 7, batches.tracklet_labels(paths), 1)
    for (_, batch_labels, rows), want in zip(batches.make_dataset(paths, labels, args, 0).take(3),
                                            sampler, strict=False):
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_array_equal(batch_labels, labels[want])
