"""Where training batches are made: the PK sampler and the tf.data input pipeline.

A batch holds P identities with K images each (PK sampling, as in the paper). The sampler is
plain NumPy and seeded, so that a resumed run replays it to the iteration it stopped at; the
pipeline decodes, resizes, crops, flips, pads-and-crops and erases the images on tf.data's
threads, each image's randomness seeded by its position in the stream. TensorFlow is imported
inside the functions, so that train.py reports flag mistakes before paying its import.
"""
import argparse
import itertools
import os
import re
import time

import numpy as np

import common

# ImageNet's mean colour (0.485, 0.456, 0.406) in [0, 255] RGB: what erased pixels become, so
# that after the net's mean subtraction they are about 0 (Zhong et al.'s choice).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
ERASING_AREA = (0.02, 0.4)  # of the image, as Zhong et al. and Luo et al.
ERASING_ASPECT = (0.3, 1 / 0.3)  # height / width of the erased rectangle
ERASING_ATTEMPTS = 100

# A MARS frame's identity, camera and tracklet number: the name up to `F` and the frame.
MARS_TRACKLET = re.compile(r'(?:00-1|\d{4})C\d+T\d+(?=F\d+)')


def add_flags(group) -> None:
    """Adds train.py's flags of PK sampling, loading and augmentation to an argparse group."""
    group.add_argument('--batch_p', default=32, type=common.positive_int,
                       help='Identities per batch (P), at least 2.')
    group.add_argument('--batch_k', default=4, type=common.positive_int,
                       help='Images per identity in a batch (K), at least 2.')
    group.add_argument('--loading_threads', default=8, type=common.positive_int,
                       help='Images decoded in parallel.')
    group.add_argument('--frames_per_tracklet', default=None, type=common.positive_int,
                       help='Video datasets: at most this many of an identity\'s K images from '
                            'one tracklet (MARS names, else one tracklet per folder), so that a '
                            'batch sees an identity in several tracklets; default: any images.')
    group.add_argument('--flip_augment', action='store_true', default=False,
                       help='Flip training images horizontally at random.')
    group.add_argument('--crop_augment', action='store_true', default=False,
                       help='Resize to the pre-crop size, then crop the net input size at random.')
    group.add_argument('--pad_crop', default=0, type=common.nonnegative_int, metavar='PIXELS',
                       help='After crop and flip: pad this many black pixels on every side and '
                            'crop back at random (the strong baseline: 10); 0: off.')
    group.add_argument('--random_erasing', default=0.0, type=common.float_in(0, 1),
                       metavar='P', help='Random erasing (Zhong et al.) of a share P of the '
                       'images, last: a rectangle of 2-40%% of the image, aspect 0.3-3.33, in '
                       'the ImageNet mean colour (the strong baseline: 0.5); 0: off.')


def load_training_data(args: argparse.Namespace):
    """Reads and checks the training set: every image exists and decodes, P identities at least.

    Returns:
        (fids, paths, labels, seconds): fids (N,) as in the CSV, paths (N,) under
        --image_root, labels (N,) int32 identity numbers in [0, number of identities), and
        the seconds the decoding check took.
    """
    pids, fids = common.load_dataset(args.train_set, args.image_root, check_files=True)
    paths = np.array([os.path.join(args.image_root, fid) for fid in fids])
    unique_pids, labels = np.unique(pids, return_inverse=True)
    if len(unique_pids) < args.batch_p:
        raise common.InputError(f'{args.train_set} has {len(unique_pids)} identities, fewer '
                                f'than --batch_p {args.batch_p}')
    started = time.time()
    bad = find_undecodable(paths, args.loading_threads)
    if bad:
        raise common.InputError(f'{len(bad)} images of {args.train_set} cannot be decoded, '
                                f'e.g. {", ".join(bad[:3])}')
    return fids, paths, labels.astype(np.int32), time.time() - started


def find_undecodable(paths: np.ndarray, threads: int) -> list[str]:
    """The paths that TensorFlow cannot decode as an image, found with a parallel pass."""
    import tensorflow as tf
    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
    dataset = dataset.map(lambda row, path: (row, tf.shape(common.read_image(path))),
                          num_parallel_calls=threads).ignore_errors()
    decoded = np.zeros(len(paths), bool)
    for rows, shapes in dataset.batch(4096).as_numpy_iterator():
        decoded[rows[(shapes[:, 0] > 0) & (shapes[:, 1] > 0)]] = True
    return list(paths[~decoded])


def pk_batches(labels: np.ndarray, batch_p: int, batch_k: int, seed: int,
               tracklets: np.ndarray | None = None, frames_per_tracklet: int | None = None):
    """Endless PK batches of dataset row indices.

    Each epoch shuffles the identities and cuts them into groups of P; the identities left
    over when P does not divide their number sit that epoch out (different ones every epoch,
    as in the 2017 code). Each identity gives K images: without replacement if it has >= K,
    otherwise all of its images equally often (concatenated shuffles), so repeats are balanced.
    With `frames_per_tracklet` F, an identity's K images come from its tracklets in random
    order, at most F from each, going round again only when every tracklet has given F.

    Args:
        labels: (N,) int identity label of every dataset row, in [0, number of identities).
        batch_p, batch_k: P and K.
        seed: the same seed gives the same batches.
        tracklets: (N,) int tracklet label of every row (with frames_per_tracklet).
        frames_per_tracklet: F, or None: any of an identity's images.

    Yields:
        (P*K,) int64 row indices, identity by identity (K consecutive rows share a label).
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind='stable')
    groups = np.split(order, np.cumsum(np.bincount(labels))[:-1])  # rows of each identity
    if frames_per_tracklet:
        groups = [split_by(rows, tracklets[rows]) for rows in groups]
    while True:
        identities = rng.permutation(len(groups))
        for start in range(0, len(groups) - batch_p + 1, batch_p):
            batch = []
            for identity in identities[start:start + batch_p]:
                rows = groups[identity]
                if frames_per_tracklet:
                    batch.append(from_tracklets(rng, rows, batch_k, frames_per_tracklet))
                    continue
                shuffles = [rng.permutation(len(rows)) for _ in range(-(-batch_k // len(rows)))]
                batch.append(rows[np.concatenate(shuffles)[:batch_k]])
            yield np.concatenate(batch).astype(np.int64)


def split_by(rows: np.ndarray, keys: np.ndarray) -> list[np.ndarray]:
    """`rows` grouped by their `keys` (one array per distinct key)."""
    order = np.argsort(keys, kind='stable')
    return np.split(rows[order], np.flatnonzero(np.diff(keys[order])) + 1)


def from_tracklets(rng: np.random.Generator, tracklets: list[np.ndarray], count: int,
                   per_tracklet: int) -> np.ndarray:
    """`count` rows from `tracklets` (row arrays) visited in random order, at most
    `per_tracklet` from each per round; each tracklet's frames in a shuffled order, a frame
    again only after all of its tracklet's (so repeats are balanced, as without tracklets)."""
    shuffled = [rng.permutation(rows) for rows in tracklets]
    used = [0] * len(tracklets)
    chosen = []
    while len(chosen) < count:
        for t in rng.permutation(len(tracklets)):
            for _ in range(min(per_tracklet, len(shuffled[t]), count - len(chosen))):
                chosen.append(shuffled[t][used[t] % len(shuffled[t])])
                used[t] += 1
            if len(chosen) == count:
                break
    return np.array(chosen, np.int64)


def tracklet_labels(fids: np.ndarray) -> np.ndarray:
    """(N,) int tracklet label of each training image: MARS names (`0001C1T0001F001.jpg`) by
    identity, camera and tracklet number, any other name by its folder (DukeMTMC-VideoReID
    and prepare.py tracklet_folders keep one tracklet per folder)."""
    names = [os.path.dirname(fid) + '/' + (match[0] if (match := MARS_TRACKLET.match(
        os.path.basename(fid))) else '') for fid in fids]
    return np.unique(names, return_inverse=True)[1]


def make_dataset(paths: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
                 start_iteration: int, worker: int = 0, workers: int = 1):
    """The training batches from `start_iteration` on, as a tf.data.Dataset.

    Batch i is the same whether the run started at 0 or was resumed at i, sampling and
    augmentation alike: the sampler is replayed up to i, and each image's random crop, flip,
    pad-crop and erasing are seeded by its position in the stream. With several workers each
    loads only its part of every batch (the worker'th of `workers` equal consecutive parts).

    Returns:
        Dataset of (images (b, H, W, 3) float32 in [0, 255], labels (b,) int32, rows (B,)
        int64: the whole batch's), B = P*K, b = B / workers, H and W the net input size.
    """
    import tensorflow as tf
    size = args.batch_p * args.batch_k
    share = size // workers
    mine = slice(worker * share, (worker + 1) * share)
    frames_per_tracklet = getattr(args, 'frames_per_tracklet', None)
    tracklets = tracklet_labels(paths) if frames_per_tracklet else None

    def sampler():
        yield from itertools.islice(pk_batches(labels, args.batch_p, args.batch_k, args.seed,
                                               tracklets, frames_per_tracklet),
                                    start_iteration, None)

    def my_rows():
        for rows in sampler():
            yield rows[mine]

    paths_t, labels_t = tf.constant(paths), tf.constant(labels, tf.int32)

    def load(position, row):
        seed = tf.stack([tf.constant(args.seed, tf.int64), 2 * position])
        return augment(common.read_image(paths_t[row]), seed, args), labels_t[row], row

    def load_mine(count, row):  # count: of this worker's images; position: in the stream
        return load(count // share * size + worker * share + count % share, row)

    dataset = tf.data.Dataset.from_generator(
        my_rows, output_signature=tf.TensorSpec((share,), tf.int64))
    dataset = dataset.unbatch().enumerate(start=start_iteration * share)
    dataset = dataset.map(load_mine, num_parallel_calls=args.loading_threads)  # keeps the order
    whole = tf.data.Dataset.from_generator(
        sampler, output_signature=tf.TensorSpec((size,), tf.int64))
    dataset = tf.data.Dataset.zip(dataset.batch(share), whole)
    return dataset.map(lambda mine, rows: (*mine[:2], rows)).prefetch(2)


def augment(image, seed, args: argparse.Namespace):
    """Resizes a decoded image (H, W, 3) uint8 to the net input size, with the augmentations
    of `args` seeded by `seed` (2,) int64: crop, flip, pad-and-crop, random erasing.

    Returns:
        (height, width, 3) float32 in [0, 255].
    """
    import tensorflow as tf
    height, width = args.net_input_height, args.net_input_width
    flip_seed = seed + tf.constant([0, 1], tf.int64)
    if args.crop_augment:
        image = common.resize_image(image, args.pre_crop_height, args.pre_crop_width)
        image = tf.image.stateless_random_crop(image, (height, width, 3), seed)
    else:
        image = common.resize_image(image, height, width)
    if args.flip_augment:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    pad, erasing = getattr(args, 'pad_crop', 0), getattr(args, 'random_erasing', 0.0)
    if pad:  # seeds of their own, derived from the image's position like the others
        image = pad_crop(image, pad, tf.random.experimental.stateless_fold_in(seed, 2))
    if erasing:
        image = random_erasing(image, tf.random.experimental.stateless_fold_in(seed, 3), erasing)
    return image


def random_erasing(image, seed, probability: float, area=ERASING_AREA, aspect=ERASING_ASPECT,
                   fill=IMAGENET_MEAN):
    """Random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020).

    With `probability`, a rectangle of the image is filled with `fill`: its area a uniform
    share of the image in `area`, its aspect ratio h / w uniform in `aspect`, its size rounded
    to whole pixels, its position uniform among those where it fits. As in the published
    code, up to 100 draws of area and aspect are made and the first that fits (h < H, w < W)
    is taken; if none fits, the image stays as it is. The draws are vectorised (all 100 are
    made, the first fitting one used), so the op has no data-dependent loop.

    Args:
        image: float (H, W, C) in [0, 255].
        seed: (2,) int64 stateless seed.
        probability: p in [0, 1].
        area, aspect: (low, high) ranges; fill: C values.

    Returns:
        The image, erased or not: same shape and dtype.
    """
    import tensorflow as tf
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    draws = tf.random.stateless_uniform((4, ERASING_ATTEMPTS), seed)
    coin = tf.random.stateless_uniform((), tf.random.experimental.stateless_fold_in(seed, 1))
    target = (area[0] + (area[1] - area[0]) * draws[0]) * h_f * w_f
    ratio = aspect[0] + (aspect[1] - aspect[0]) * draws[1]
    heights, widths = tf.round(tf.sqrt(target * ratio)), tf.round(tf.sqrt(target / ratio))
    fits = (heights < h_f) & (widths < w_f) & (heights >= 1) & (widths >= 1)
    first = tf.argmax(tf.cast(fits, tf.int32))  # the first that fits (0 if none does)
    h, w = tf.cast(heights[first], tf.int32), tf.cast(widths[first], tf.int32)
    top = tf.cast(draws[2, first] * tf.cast(height - h + 1, tf.float32), tf.int32)
    left = tf.cast(draws[3, first] * tf.cast(width - w + 1, tf.float32), tf.int32)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    erase = (coin < probability) & tf.reduce_any(fits)
    return tf.where(inside[:, :, None] & erase, tf.constant(fill, image.dtype), image)


def pad_crop(image, pixels: int, seed):
    """Pads `pixels` zeros (black) on every side, then crops the original size at a uniform
    random position (Luo et al.: pad 10, random crop), a shift of up to `pixels` either way.

    Args:
        image: (H, W, C) with a static or dynamic size.
        pixels: the padding, >= 0.
        seed: (2,) int64 stateless seed.

    Returns:
        (H, W, C), the image's dtype.
    """
    import tensorflow as tf
    padded = tf.pad(image, [[pixels, pixels], [pixels, pixels], [0, 0]])
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed)
