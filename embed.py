#!/usr/bin/env python3
"""Embeds the images of a dataset CSV with a trained model into an HDF5 file.

    python embed.py --experiment_root ~/experiments/my_experiment \\
        --dataset data/market1501_query.csv [--flip_augment --crop_augment five --aggregator mean]

The net, head, embedding size, input sizes and image root come from the experiment's
args.json unless given here. Writes dataset `emb` (N, D) (and the 2017 name `embs` as a link);
with test-time augmentation also `emb_aug` (A, N, D) and `augmentation_types` (A,). Row i
always belongs to line i of the CSV. Experiment roots of the 2017 TensorFlow 1 code work too.
"""
import argparse
import csv
import sys
from pathlib import Path

import numpy as np

import common
import experiment
from model import (PRECISIONS, build_model, computes_bfloat16_on_gpu, cpu_bfloat16, import_plugin,
                   inference_model, plugin_names)

AGGREGATORS = plugin_names('aggregators')
CROPS = ('center', 'avgpool', 'five')
# The corner crops of `--crop_augment five`, in the 2017 order, as (row, column) of the
# crop's top-left corner in units of the margin (pre-crop size - net input size).
FIVE_CROPS = {'center': (0.5, 0.5), 'top_left': (0, 0), 'top_right': (0, 1),
              'bottom_left': (1, 0), 'bottom_right': (1, 1)}
parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument(
    '--experiment_root', required=True,
    help='Folder of the trained experiment: its args.json and checkpoints are read, and the '
         'embeddings are written there.')
parser.add_argument(
    '--dataset', required=True,
    help='CSV file of `identity,relative/path.jpg` lines to embed, e.g. data/market1501_query.csv.')
parser.add_argument(
    '--filename', default=None,
    help='Output HDF5 file, relative to --experiment_root unless absolute. Default: the '
         'dataset file name with `_embeddings.h5`, e.g. market1501_query_embeddings.h5.')
parser.add_argument(
    '--csv', default=None, metavar='FILE',
    help='Also write `fid,v1,...,vD` text lines of the (aggregated) embeddings to FILE, relative '
         'to --experiment_root unless absolute; `-` writes to standard output.')
parser.add_argument(
    '--checkpoint', default=None,
    help='Checkpoint to load, e.g. checkpoint-20000, relative to --experiment_root unless '
         'absolute. Default: the latest one.')
parser.add_argument(
    '--image_root', default=None,
    help='Folder the image paths of --dataset are relative to. Default: args.json\'s, else the '
         'current folder.')
parser.add_argument(
    '--batch_size', default=256, type=common.positive_int,
    help='Images (counting each augmentation) per forward pass; only speed and memory depend '
         'on it, not the embeddings.')
parser.add_argument(
    '--flip_augment', action='store_true',
    help='Also embed the horizontal flip of each image (2 embeddings per crop).')
parser.add_argument(
    '--crop_augment', choices=CROPS, default=None,
    help='Resize to the pre-crop size and then: `center` embeds the centre crop of the net input '
         'size, `five` the centre and four corner crops, `avgpool` the whole pre-crop-size image '
         '(global pooling absorbs the size). Default: resize straight to the net input size.')
parser.add_argument(
    '--aggregator', choices=AGGREGATORS, default=None,
    help='How to combine the embeddings of the augmentations into `emb`: `mean` for models '
         'trained with a euclidean loss, `normalized_mean` for `_normalize` heads. Required '
         'with --flip_augment or --crop_augment five, refused without them.')
parser.add_argument(
    '--projector', default=None, metavar='DIR',
    help='Also write TensorBoard projector files of the embeddings into DIR (tensors, metadata '
         'with identity, camera and file, a sprite of thumbnails): `tensorboard --logdir DIR`.')
parser.add_argument(
    '--shard', type=common.shard, default=None, metavar='I/N',
    help='Embed only the I-th (0-based) of N contiguous parts of --dataset, so that N machines '
         'embed one dataset: default file name `..._embeddings_partIofN.h5`, which records its '
         'rows. search.py index, search.py join and evaluate.py take the N parts.')
parser.add_argument(
    '--quiet', action='store_true',
    help='Print only warnings and errors: no settings, no progress bar.')
group = parser.add_argument_group(
    'model settings', 'Default: the value in the experiment\'s args.json.')
experiment.add_model_flags(group, dict.fromkeys(experiment.MODEL_SETTINGS))
group.add_argument(
    '--mixed_precision', choices=PRECISIONS, default=None,
    help='Compute in this precision (as train.py\'s flag); the embeddings are float32 either '
         'way. Default: what the experiment was trained with (none for roots without it).')


# ----------------------------------------------------------------------------- helpers
def augmentation_types(flip: bool, crop: str | None) -> list[str]:
    """Names of the embeddings made per image, in the order embed.py stacks them.

    As in the 2017 code, the image is flipped first and then cropped, so
    `original_flip_top_left` is the top-left crop of the flipped image (the flip of the
    original's top-right crop). Without crop augmentation the names end in `_resize`.
    """
    flips = ['original', 'original_flip'] if flip else ['original']
    crops = list(FIVE_CROPS) if crop == 'five' else [crop or 'resize']
    return [f'{f}_{c}' for f in flips for c in crops]


def augment(image, net_size: tuple[int, int], pre_crop_size: tuple[int, int], flip: bool,
            crop: str | None, legacy_resize: bool = False):
    """Resizes, flips and crops one decoded image into the inputs of its embeddings.

    Works eagerly and inside tf.data / tf.function.

    Args:
        image: uint8 or float (H, W, 3) RGB, any H and W.
        net_size: (height, width) the net sees.
        pre_crop_size: (height, width) to resize to before cropping; used with `crop` only.
        flip: add the horizontal flip.
        crop: None, `center`, `avgpool` or `five`, as --crop_augment.
        legacy_resize: resize as TensorFlow 1's resize_images did (no half-pixel centres),
            which is what models trained by the 2017 code saw.

    Returns:
        float32 (A, h, w, 3) in the order of `augmentation_types(flip, crop)`; (h, w) is
        `pre_crop_size` for `avgpool`, else `net_size`.
    """
    import tensorflow as tf
    size = pre_crop_size if crop else net_size
    if legacy_resize:
        image = tf.compat.v1.image.resize_bilinear(image[None], size, align_corners=False,
                                                   half_pixel_centers=False)[0]
    else:
        image = common.resize_image(image, *size)  # as train.py resizes
    image = tf.cast(image, tf.float32)
    margin = (size[0] - net_size[0], size[1] - net_size[1])
    inputs = []
    for im in [image, tf.reverse(image, [1])] if flip else [image]:
        if crop in ('center', 'five'):
            corners = FIVE_CROPS.values() if crop == 'five' else [FIVE_CROPS['center']]
            for row, col in corners:
                top, left = int(margin[0] * row), int(margin[1] * col)
                inputs.append(im[top:top + net_size[0], left:left + net_size[1]])
        else:
            inputs.append(im)
    return tf.stack(inputs)


def compute_embeddings(model, paths: list[str], net_size: tuple[int, int],
                       pre_crop_size: tuple[int, int], flip: bool, crop: str | None,
                       batch_size: int, legacy_resize: bool = False, progress: bool = False,
                       forward=None) -> np.ndarray:
    """Embeds image files with test-time augmentation, decoding in parallel with the model.

    Args:
        model: a model of model.build_model, with its weights loaded.
        paths: N image files (JPEG, PNG, ...).
        net_size, pre_crop_size, flip, crop, legacy_resize: as for `augment`.
        batch_size: inputs (counting each augmentation) per forward pass.
        progress: show a progress bar on standard error (images, images/s, ETA).
        forward: the traced model call to use, `forward_pass(model)` if None; the benchmark
            passes its own to time both with one trace.

    Returns:
        float32 (N, A, D): the embeddings of the A augmentations of each image, row i for
        path i, whatever the batch size.

    Raises:
        InputError: an image cannot be read or decoded (named).
    """
    import tensorflow as tf
    from tqdm import tqdm
    per_image = len(augmentation_types(flip, crop))
    batch_size = min(batch_size, len(paths) * per_image)
    def load(path):
        return augment(common.read_image(path), net_size, pre_crop_size, flip, crop,
                       legacy_resize)

    # Parallel decoding, but in order: row i must be path i.
    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.unbatch().batch(batch_size).prefetch(tf.data.AUTOTUNE)
    forward = forward or forward_pass(model)

    embs, rows = [], 0
    bar = tqdm(total=len(paths), unit='img', desc='embedding', disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        for images in dataset:
            count = int(images.shape[0])
            # The last batch is padded to the full size so that the traced forward pass is
            # reused; in inference mode each row is computed on its own: padding changes nothing.
            if count < batch_size:
                images = tf.concat([images, tf.zeros((batch_size - count, *images.shape[1:]),
                                                     images.dtype)], 0)
            embs.append(forward(images)[:count].numpy())
            bar.update((rows + count) // per_image - rows // per_image)
            rows += count
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        # tf.data's error does not say which file; the culprit is at or after the last image
        # that came through.
        culprit = first_undecodable(paths[rows // per_image:])
        if culprit is None:
            raise
        raise common.InputError(f'cannot decode image {culprit[0]}: {culprit[1]}') from e
    finally:
        bar.close()
    return np.concatenate(embs).reshape(len(paths), per_image, -1)


def forward_pass(model):
    """The model's inference call on a batch (B, H, W, 3) -> `emb` (B, D), traced once per shape."""
    import tensorflow as tf

    @tf.function(autograph=False)  # no Python control flow to convert
    def forward(images):
        return model(images, training=False)['emb']
    return forward


def first_undecodable(paths: list[str]) -> tuple[str, str] | None:
    """The first of `paths` that TensorFlow cannot read or decode, with the reason, or None."""
    import tensorflow as tf
    for path in paths:
        try:
            common.read_image(path)
        except tf.errors.OpError as e:
            return path, e.message.strip().split('\n')[0]
    return None


def write_csv(path: Path | None, fids: np.ndarray, emb: np.ndarray) -> None:
    """Writes `fid,v1,...,vD` lines to `path` (None: standard output), atomically for files."""
    def write(f):
        writer = csv.writer(f, lineterminator='\n')
        for fid, row in zip(fids, emb, strict=True):
            writer.writerow([fid, *(f'{v:.9g}' for v in row)])  # 9 digits: float32 round trip
    if path is None:
        write(sys.stdout)
        sys.stdout.flush()
        return
    with common.atomic_write(path) as tmp, open(tmp, 'w', newline='', encoding='utf-8') as f:
        write(f)


def model_settings(args: argparse.Namespace, root: Path) -> dict:
    """Fills the unset model settings of `args` from the experiment's args.json, and checks them.

    Returns:
        The experiment's args.json ({} if there is none).

    Raises:
        InputError: a setting is missing or invalid, or the pre-crop size is too small.
    """
    args_file = root / experiment.ARGS_FILE
    trained = experiment.read_args(args_file) if args_file.is_file() else {}
    experiment.fill_model_settings(args, trained, args_file)
    needed = ['model_name', 'head_name', 'embedding_dim', 'net_input_height', 'net_input_width']
    if args.crop_augment:
        needed += ['pre_crop_height', 'pre_crop_width']
    missing = [key for key in needed if getattr(args, key) is None]
    if missing:
        raise common.InputError(
            f'{", ".join(missing)} not known: {args_file} '
            f'{"lacks them" if trained else "does not exist"}; give --{" --".join(missing)}')
    if args.crop_augment:
        experiment.check_crop_size((args.net_input_height, args.net_input_width),
                                   (args.pre_crop_height, args.pre_crop_width),
                                   f'--crop_augment {args.crop_augment}')
    if args.mixed_precision is None:
        args.mixed_precision = trained.get('mixed_precision', 'none')
        if args.mixed_precision not in PRECISIONS:
            raise common.InputError(f'{args_file}: mixed_precision is {args.mixed_precision!r}, '
                                    f'expected one of {", ".join(PRECISIONS)}')
    return trained


def checked_augmentation(args: argparse.Namespace) -> list[str]:
    """The augmentation types of the flags: several embeddings per image need an aggregator,
    one must not have one."""
    types = augmentation_types(args.flip_augment, args.crop_augment)
    if len(types) > 1 and args.aggregator is None:
        raise common.InputError(f'--flip_augment/--crop_augment five make {len(types)} '
                                f'embeddings per image: choose how to combine them with '
                                f'--aggregator {{{",".join(AGGREGATORS)}}}')
    if len(types) == 1 and args.aggregator is not None:
        raise common.InputError(f'--aggregator {args.aggregator} needs several embeddings per '
                                f'image: add --flip_augment or --crop_augment five')
    return types


def write_projector(folder: str, emb: np.ndarray, pids: np.ndarray, fids: np.ndarray,
                    paths: list[str], log) -> None:
    """--projector: TensorBoard's projector files of the embeddings (see report.py)."""
    import report
    try:
        count = report.write_projector(folder, emb, pids, fids, paths, log)
    except OSError as e:
        raise common.InputError(f'cannot write the projector files into {folder}: {e}') from None
    log.info('wrote TensorBoard projector files of %d images into %s', count, folder)


# ----------------------------------------------------------------------------- main
def shard_of(args: argparse.Namespace, pids: np.ndarray, fids: np.ndarray, image_root: Path,
             checkpoint: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """This machine's rows of --shard I/N, checked to exist, and the HDF5 attributes that let
    the parts be joined and checked (rows, total, the dataset's digest, the checkpoint).

    Raises:
        common.InputError: the part has no rows, or one of its images is missing.
    """
    rows = common.part_rows(*args.shard, len(fids))
    if rows[0] == rows[1]:
        raise common.InputError(f'--shard {args.shard[0]}/{args.shard[1]}: {args.dataset} '
                                f'has only {len(fids)} rows, this part none')
    attrs = {'part_rows': rows, 'part_total': len(fids),
             'part_dataset': common.dataset_digest(pids, fids), 'part_checkpoint': checkpoint.name}
    pids, fids = pids[rows[0]:rows[1]], fids[rows[0]:rows[1]]
    common.check_images(fids, image_root, args.dataset)
    return pids, fids, attrs


def main(argv: list[str] | None = None) -> None:
    args = parser.parse_args(argv)
    log = common.setup_logging(quiet=args.quiet)
    root = Path(args.experiment_root).expanduser()
    if not root.is_dir():
        raise common.InputError(f'experiment root {root} is not a folder')

    types = checked_augmentation(args)

    # Settings: the command line wins over args.json.
    precision_given = args.mixed_precision is not None
    trained = model_settings(args, root)
    net_size = (args.net_input_height, args.net_input_width)
    pre_crop_size = (args.pre_crop_height, args.pre_crop_width)
    checkpoint = experiment.find_checkpoint(root, args.checkpoint)

    # Data and output files.
    image_root = Path(args.image_root or '.').expanduser()
    pids, fids = common.load_dataset(args.dataset, image_root, check_files=not args.shard)
    attrs, suffix = None, ''
    if args.shard:
        pids, fids, attrs = shard_of(args, pids, fids, image_root,
                                     checkpoint or experiment.latest_checkpoint(root))
        suffix = f'_part{args.shard[0]}of{args.shard[1]}'
    filename = root / (args.filename or f'{Path(args.dataset).stem}_embeddings{suffix}.h5')
    common.probe_writable(filename)
    csv_file = None if args.csv in (None, '-') else root / args.csv
    if csv_file is not None:
        common.probe_writable(csv_file)
    if 'crop_augment' in trained and bool(trained['crop_augment']) != bool(args.crop_augment):
        log.warning('crop augmentation differs between training (%s) and embedding (%s): the '
                    'net sees people at another scale than it learned',
                    'on' if trained['crop_augment'] else 'off', args.crop_augment or 'off')

    # Model: imported only now, so that the mistakes above are reported without TensorFlow's
    # import time.
    checkpoint = checkpoint or experiment.latest_checkpoint(root)
    is_tf1 = experiment.is_tf1_checkpoint(checkpoint)
    if (not precision_given and args.mixed_precision == 'bfloat16' and cpu_bfloat16() == 'none'
            and not computes_bfloat16_on_gpu()):  # the weights are float32: embed anywhere
        log.warning('%s was trained in bfloat16, which this CPU cannot compute (no AVX-512): '
                    'embedding in float32', root)
        args.mixed_precision = 'none'
    model = build_model(args.model_name, args.head_name, args.embedding_dim,
                        args.mixed_precision, **experiment.model_options(args))
    experiment.restore_model(model, checkpoint, args.embedding_dim, is_tf1, log)
    model = inference_model(model)  # what training alone needs (a classifier) is not run
    log.info('embedding %d images of %s with %s from %s, %d embedding%s each (%s)%s', len(fids),
             args.dataset, model.name, checkpoint, len(types), 's' * (len(types) > 1),
             ', '.join(types), f', computing in {args.mixed_precision}'
             if args.mixed_precision != 'none' else '')

    # Embedding.
    paths = [str(image_root / fid) for fid in fids]
    emb = compute_embeddings(model, paths, net_size, pre_crop_size, args.flip_augment,
                             args.crop_augment, args.batch_size,
                             legacy_resize=is_tf1,  # the 2017 code trained on TF1's resize
                             progress=not args.quiet)

    # Aggregation and output.
    emb_aug = None
    if len(types) > 1:
        emb_aug = emb.transpose(1, 0, 2)  # (A, N, D)
        emb = import_plugin('aggregators', args.aggregator).aggregate(emb_aug)
    else:
        emb = emb[:, 0]
    common.save_embeddings(filename, emb, emb_aug, types if emb_aug is not None else None,
                           attrs)
    log.info('wrote %s: emb %s%s', filename, emb.shape,
             f', emb_aug {emb_aug.shape}' if emb_aug is not None else '')
    if args.csv is not None:
        write_csv(csv_file, fids, emb)
        if csv_file is not None:
            log.info('wrote %s', csv_file)
    if args.projector is not None:
        write_projector(args.projector, emb, pids, fids, paths, log)


if __name__ == '__main__':
    common.run(main)
