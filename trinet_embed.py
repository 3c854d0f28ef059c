#!/usr/bin/env python3
"""Embeds images with the paper's exact TriNet weights, rebuilt in TensorFlow.

    python trinet_embed.py files.txt trinet-market1501.npz > embeddings.csv

The weights are the Lasagne/Theano export the paper released: `arr_0 ... arr_272` in Lasagne's
`get_all_params` order. The network is the Caffe-style ResNet-50 of Lasagne's model-zoo recipe
(stride in the first 1x1 of a stage, a bias on conv1 only, max pool that keeps the partial
window at the border, convolutions applied without flipping) followed by Dense 1024 (no bias),
batch norm, ReLU and Dense 128. Each image is read as BGR with OpenCV, resized to 144x288,
cut into 10 crops of 128x256 (centre and four corners, and their mirror images), embedded,
and the 10 embeddings are averaged, as the paper's own script did.

Exit codes: 1 for a bad command line (as the 2017 script), 2 for an input that cannot be used
(missing or unreadable file list, weights or image, weights of the wrong shapes).
"""
import argparse
import os
import sys
import time
import zipfile

import numpy as np

import common


class UsageParser(argparse.ArgumentParser):
    """argparse, except that a usage error exits with 1 (the 2017 script's code), not 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f'{self.prog}: error: {message}\n')


parser = UsageParser(description=__doc__.split('\n\n')[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument('image_list',
                    help='text file with one image path per line (relative paths are relative '
                         'to the current directory; blank lines are skipped)')
parser.add_argument('weights', help='the TriNet weights, trinet-market1501.npz or trinet-mars.npz')
parser.add_argument('--h5', metavar='FILE',
                    help='also write the embeddings as dataset `emb` (N, 128), in file order, '
                         'to this HDF5 file')
parser.add_argument('--batch_size', type=common.positive_int, default=8,
                    help='images per network step (each is 10 crops); memory grows with it')


# The per-channel mean of the mean image of the original Caffe ResNet-50, in BGR order: the
# network sees BGR, as Caffe (and the paper's script, which fed cv2.imread's output) did.
BGR_MEAN = np.array([103.0626238, 115.90288257, 123.15163084], np.float32)
RESIZE_H, RESIZE_W = 288, 144
CROP_H, CROP_W = 256, 128
EMB_DIM = 128
# (stage, bottleneck depth, units, stride) of Caffe's ResNet-50: res2 .. res5.
STAGES = ((2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2))
BN_PARAMS = ('beta', 'gamma', 'mean', 'inv_std')  # Lasagne BatchNormLayer's get_params order


# ----------------------------------------------------------------------------- weights
def _bn_name(conv: str) -> str:
    """Caffe's name of the batch norm after a conv: conv1 -> bn_conv1, res2a_x -> bn2a_x."""
    return 'bn_conv1' if conv == 'conv1' else 'bn' + conv[3:]


def _conv_bn_layout(conv: str, c_in: int, c_out: int, size: int, bias: bool = False) -> list:
    """(name, shape) of a conv's W (and b) and of its batch norm, in get_params order."""
    layout = [(f'{conv}.W', (c_out, c_in, size, size))]  # Lasagne's (out, in, h, w)
    if bias:
        layout.append((f'{conv}.b', (c_out,)))
    return layout + [(f'{_bn_name(conv)}.{p}', (c_out,)) for p in BN_PARAMS]


def param_layout() -> list[tuple[str, tuple[int, ...]]]:
    """The arrays of a TriNet npz, in Lasagne's `get_all_params` order.

    get_all_layers walks the graph depth first and lists a layer after its inputs; an
    ElemwiseSumLayer's inputs are (shortcut, main branch), so a projection shortcut's
    parameters come before those of the block's main branch.

    Returns:
        273 (name, shape) pairs; `arr_i` of the npz is the i-th.
    """
    layout = _conv_bn_layout('conv1', 3, 64, 7, bias=True)
    c_in = 64
    for stage, depth, units, _ in STAGES:
        for unit in 'abcdef'[:units]:
            name = f'res{stage}{unit}'
            if unit == 'a':
                layout += _conv_bn_layout(f'{name}_branch1', c_in, 4 * depth, 1)
            layout += _conv_bn_layout(f'{name}_branch2a', c_in, depth, 1)
            layout += _conv_bn_layout(f'{name}_branch2b', depth, depth, 3)
            layout += _conv_bn_layout(f'{name}_branch2c', depth, 4 * depth, 1)
            c_in = 4 * depth
    layout += [('fc1024.W', (2048, 1024))]  # Lasagne DenseLayer W is (in, out)
    layout += [(f'fc1024_bn.{p}', (1024,)) for p in BN_PARAMS]
    layout += [('emb.W', (1024, EMB_DIM)), ('emb.b', (EMB_DIM,))]
    return layout


def load_weights(npz_file: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a TriNet npz and checks every array against `param_layout()`.

    Returns:
        {name: float32 array} with the names of `param_layout()`.

    Raises:
        common.InputError: unreadable file, or the first array that is missing, extra or of the
            wrong shape, e.g. `arr_17 has shape (64,) but bn2a_branch2a.gamma expects (256,)`.
    """
    layout = param_layout()
    try:
        with np.load(npz_file, allow_pickle=False) as f:
            keys = set(f.files)
            weights = {}
            for i, (name, shape) in enumerate(layout):
                weights[name] = _checked_array(f, i, name, shape, npz_file, len(keys),
                                               len(layout))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise common.InputError(f'cannot read weights {npz_file}: {e}') from None
    extra = sorted(keys - {f'arr_{i}' for i in range(len(layout))})
    if extra:
        raise common.InputError(f'{npz_file}: {len(extra)} arrays more than the {len(layout)} of '
                                f'TriNet, e.g. {", ".join(extra[:3])}')
    return weights


def _checked_array(npz, i: int, name: str, shape: tuple, npz_file, count: int,
                   expected: int) -> np.ndarray:
    """`arr_i` of the open npz as float32, once it is there, readable without unpickling, of
    `shape`, numbers and finite; else an InputError naming it."""
    key = f'arr_{i}'
    if key not in npz.files:
        raise common.InputError(f'{npz_file}: {key} is missing ({count} arrays, TriNet has '
                                f'{expected}); {name} expects shape {shape}')
    try:
        array = npz[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # e.g. a pickled object
        raise common.InputError(f'{npz_file}: {key} cannot be read: {e}') from None
    if array.shape != shape:
        raise common.InputError(f'{npz_file}: {key} has shape {array.shape} but {name} expects '
                                f'{shape}')
    if array.dtype.kind not in 'fiu':
        raise common.InputError(f'{npz_file}: {key} ({name}) holds {array.dtype}, not numbers')
    if not np.isfinite(array).all():
        raise common.InputError(f'{npz_file}: {key} ({name}) holds NaN or inf')
    return array.astype(np.float32)


# ----------------------------------------------------------------------------- network
def max_pool_keep_border(x, size: int = 3, stride: int = 2):
    """Theano's max pool with ignore_border=False, which the recipe's pool1 uses.

    A window that starts inside the map is kept even when it sticks out at the bottom or
    right: the output has ceil((n - size) / stride) + 1 rows (cols) and a partial window
    takes the max of what it covers. Padding with -inf, then a VALID pool, does exactly that
    (TF's SAME pool agrees only for some sizes, and pads the top too when it pads by 2).

    Args:
        x: (B, H, W, C) float tensor with static H, W >= size.

    Returns:
        (B, ceil((H - size) / stride) + 1, ceil((W - size) / stride) + 1, C).
    """
    from keras import ops
    pads = []
    for n in x.shape[1:3]:
        out = -(-(n - size) // stride) + 1
        pads.append([0, (out - 1) * stride + size - n])
    x = ops.pad(x, [[0, 0], *pads, [0, 0]], constant_values=-np.inf)
    return ops.max_pool(x, size, stride, padding='valid')


def _conv_bn(x, weights: dict, conv: str, stride: int = 1, pad: int = 0, relu: bool = True):
    """Conv (Lasagne W applied as correlation) + test-time batch norm, folded into one conv.

    Lasagne's batch norm at test time is (x - mean) * inv_std * gamma + beta, an affine map
    per channel, so it folds exactly into the conv's kernel and bias: one op instead of four,
    and no epsilon to guess (inv_std is stored).
    """
    import keras
    bn = _bn_name(conv)
    scale = weights[f'{bn}.gamma'] * weights[f'{bn}.inv_std']
    # The recipe builds every ConvLayer with flip_filters=False (Caffe's correlation, which is
    # also what tf.nn.conv2d computes), so the kernel is only transposed, never flipped.
    kernel = weights[f'{conv}.W'].transpose(2, 3, 1, 0) * scale  # (out,in,h,w) -> (h,w,in,out)
    bias = (weights.get(f'{conv}.b', 0.0) - weights[f'{bn}.mean']) * scale + weights[f'{bn}.beta']
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f'{conv}_pad')(x)
    layer = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], stride, 'valid', name=conv)
    x = layer(x)
    layer.set_weights([kernel, bias.astype(np.float32)])
    return keras.layers.ReLU(name=f'{conv}_relu')(x) if relu else x


def build_model(weights: dict[str, np.ndarray]):
    """The TriNet as a Keras model holding the given weights.

    Args:
        weights: as returned by `load_weights`.

    Returns:
        keras.Model from (B, 256, 128, 3) float32 BGR crops minus `BGR_MEAN` to (B, 128)
        embeddings.
    """
    import keras
    crops = keras.Input((CROP_H, CROP_W, 3), name='crops')
    x = _conv_bn(crops, weights, 'conv1', stride=2, pad=3)
    x = keras.layers.Lambda(max_pool_keep_border, name='pool1')(x)
    for stage, _, units, stride in STAGES:
        for unit in 'abcdef'[:units]:
            name = f'res{stage}{unit}'
            # Caffe's ResNet strides in the first 1x1 of a stage's first unit (and its shortcut).
            s = stride if unit == 'a' else 1
            shortcut = x
            if unit == 'a':
                shortcut = _conv_bn(x, weights, f'{name}_branch1', s, relu=False)
            y = _conv_bn(x, weights, f'{name}_branch2a', s)
            y = _conv_bn(y, weights, f'{name}_branch2b', pad=1)
            y = _conv_bn(y, weights, f'{name}_branch2c', relu=False)
            x = keras.layers.Add(name=name)([shortcut, y])
            x = keras.layers.ReLU(name=f'{name}_relu')(x)
    # pool5: the recipe's 7x7 average pool, set to (8, 4) by the paper = the whole 8x4 map.
    x = keras.layers.GlobalAveragePooling2D(name='pool5')(x)
    scale = weights['fc1024_bn.gamma'] * weights['fc1024_bn.inv_std']
    fc = keras.layers.Dense(1024, name='fc1024')
    x = keras.layers.ReLU(name='fc1024_relu')(fc(x))
    fc.set_weights([weights['fc1024.W'] * scale,
                    weights['fc1024_bn.beta'] - weights['fc1024_bn.mean'] * scale])
    emb = keras.layers.Dense(EMB_DIM, name='emb')
    out = emb(x)
    emb.set_weights([weights['emb.W'], weights['emb.b']])
    return keras.Model(crops, out, name='trinet')


# ----------------------------------------------------------------------------- images
def ten_crops(image: np.ndarray) -> np.ndarray:
    """The paper's test-time augmentation of one image.

    Resizes the uint8 image (bilinear, before any float conversion, as the paper's script),
    then takes the centre, top-left, top-right, bottom-left and bottom-right 256x128 crops and
    then the horizontal mirror of each crop, in that order.

    Args:
        image: (H, W, 3) uint8 BGR, any size.

    Returns:
        (10, 256, 128, 3) float32, `BGR_MEAN` subtracted.
    """
    import cv2
    image = cv2.resize(image, (RESIZE_W, RESIZE_H), interpolation=cv2.INTER_LINEAR)
    dy, dx = RESIZE_H - CROP_H, RESIZE_W - CROP_W
    corners = ((dy // 2, dx // 2), (0, 0), (0, dx), (dy, 0), (dy, dx))
    crops = np.stack([image[y:y + CROP_H, x:x + CROP_W] for y, x in corners])
    crops = np.concatenate([crops, crops[:, :, ::-1]])  # crop first, then mirror
    return crops.astype(np.float32) - BGR_MEAN


def read_image_list(image_list: str | os.PathLike) -> list[tuple[int, str]]:
    """Checks every path of the list before any work: exists and looks like an image.

    Only (line number, path) pairs are kept, a few MB for 100,000 images; images are decoded
    one batch at a time later.

    Raises:
        common.InputError: unreadable list, no paths, or missing or non-image files (the first
            few named with their line numbers).
    """
    import cv2
    try:
        text = common.read_text(image_list, 'image list')
    except FileNotFoundError:
        raise common.InputError(f'image list {image_list} does not exist') from None
    lines = text.replace('\r\n', '\n').replace('\r', '\n').split('\n')  # any line ends
    entries = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not entries:
        raise common.InputError(f'image list {image_list} has no paths')
    # haveImageReader only reads the signature: a truncated image is still caught at decoding.
    bad = [(n, p) for n, p in entries if not (os.path.isfile(p) and cv2.haveImageReader(p))]
    if bad:
        named = ', '.join(f'{p} (line {n})' for n, p in bad[:3])
        raise common.InputError(f'{len(bad)} of {len(entries)} images of {image_list} are missing '
                                f'or not images OpenCV can read: {named}')
    return entries


def ends_early(data: np.ndarray) -> bool:
    """True for JPEG bytes cut short: no end-of-image marker after the last scan.

    OpenCV decodes such a file with a warning and grey pixels where data is missing, which
    would be embedded silently; TensorFlow (embed.py) refuses it. Inside a scan a 0xFF byte is
    always followed by 0x00 or a restart marker, so an end marker there cannot be a chance match.
    """
    data = data.tobytes()
    return data[:2] == b'\xff\xd8' and data.rfind(b'\xff\xd9') < data.rfind(b'\xff\xda')


def load_batch(entries: list[tuple[int, str]], image_list: str) -> np.ndarray:
    """Reads and crops a batch of images: (len(entries) * 10, 256, 128, 3) float32."""
    import cv2
    crops = []
    for number, path in entries:
        try:
            data = np.fromfile(path, np.uint8)
        except OSError as e:
            raise common.InputError(f'cannot read image {path} (line {number} of {image_list}): '
                                    f'{e.strerror or e}') from None
        if ends_early(data):
            raise common.InputError(f'image {path} (line {number} of {image_list}) is cut short: '
                                    'its JPEG data has no end marker')
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # BGR uint8, grey images get 3 channels
        if image is None:
            raise common.InputError(f'cannot read image {path} (line {number} of {image_list})')
        crops.append(ten_crops(image))
    return np.concatenate(crops)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    log = common.setup_logging()

    # Inputs are checked before TensorFlow is imported: a typo fails in a fraction of a second.
    entries = read_image_list(args.image_list)
    weights = load_weights(args.weights)

    # The HDF5 file is written at the end, through save_embeddings: an interrupted run leaves
    # no truncated file, and a full disk gives an error instead of the HDF5 library's crash.
    if args.h5:
        common.probe_writable(args.h5)
    embs = [] if args.h5 else None
    start = embed_all(entries, weights, args, embs, log)
    if args.h5:
        common.save_embeddings(args.h5, np.concatenate(embs))
    seconds = time.perf_counter() - start
    log.info(f'embedded {len(entries)} images in {seconds:.1f} s '
             f'({len(entries) / seconds:.2f} images/s)')
    return 0


def embed_all(entries: list, weights: dict, args: argparse.Namespace, kept: list | None,
              log) -> float:
    """Prints the embedding line of every image, batch by batch, and appends each batch's
    (B, 128) embeddings to `kept` if given; returns the time it started."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import tensorflow as tf
    model = build_model(weights)

    @tf.function(input_signature=[tf.TensorSpec((None, CROP_H, CROP_W, 3), tf.float32)])
    def embed(crops):
        emb = model(crops, training=False)
        return tf.reduce_mean(tf.reshape(emb, (-1, 10, EMB_DIM)), axis=1)  # mean of 10 crops

    log.info(f'embedding {len(entries)} images of {args.image_list}, {args.batch_size} per step')
    start = time.perf_counter()
    for first in range(0, len(entries), args.batch_size):
        batch = entries[first:first + args.batch_size]
        embs = embed(load_batch(batch, args.image_list)).numpy()
        # str() of a float32 is its shortest round-tripping form, as the 2017 output.
        lines = [','.join([path, *map(str, emb)])
                 for (_, path), emb in zip(batch, embs, strict=True)]
        print('\n'.join(lines), flush=True)
        if kept is not None:
            kept.append(embs)
    return start


if __name__ == '__main__':
    common.run(main)
