#!/usr/bin/env python3
"""Trains a person re-identification embedding with the batch-hard triplet loss.

    python train.py --train_set data/market1501_train.csv --image_root /data/Market-1501 \\
        --experiment_root ~/experiments/my_experiment [--initial_checkpoint resnet_v1_50.ckpt]
    python train.py --experiment_root ~/experiments/my_experiment --resume

Everything the run needs later lands in the experiment root: args.json, checkpoints
(checkpoint-<iterations done>), train.log and TensorBoard event files.
"""
import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

import common
import experiment
import loss
from model import (PRECISIONS, build_model, check_precision, load_tf1_checkpoint,
                   open_tf1_checkpoint)

DISTRIBUTE = ('none', 'mirrored', 'multiworker')

parser = argparse.ArgumentParser(
    description='Train a re-identification embedding with a triplet loss on PK batches.',
    allow_abbrev=False)  # exact flag names, so that --resume can tell which flags were given

parser.add_argument('--experiment_root', required=True,
                    help='Folder for args.json, checkpoints, train.log and TensorBoard logs.')
parser.add_argument('--train_set', help='Training CSV of "identity,relative/path" lines.')
parser.add_argument('--image_root', help='Folder the paths of --train_set are relative to.')
parser.add_argument('--resume', action='store_true', default=False,
                    help='Continue the run in --experiment_root from its latest checkpoint, '
                         'with the settings stored in its args.json.')
experiment.add_model_flags(parser, {
    'model_name': 'resnet_v1_50', 'head_name': 'fc1024', 'embedding_dim': 128,
    'net_input_height': 256, 'net_input_width': 128, 'pre_crop_height': 288,
    'pre_crop_width': 144})
parser.add_argument('--initial_checkpoint', default=None,
                    help='TF1 checkpoint with slim names (e.g. the ImageNet resnet_v1_50.ckpt) '
                         'to initialise the backbone from; default: random initialisation.')
parser.add_argument('--batch_p', default=32, type=common.positive_int,
                    help='Identities per batch (P), at least 2.')
parser.add_argument('--batch_k', default=4, type=common.positive_int,
                    help='Images per identity in a batch (K), at least 2.')
parser.add_argument('--loading_threads', default=8, type=common.positive_int,
                    help='Images decoded in parallel.')
parser.add_argument('--margin', default='soft', type=common.float_or_string(loss.MARGINS),
                    help='Triplet margin: a number >= 0 (hinge), "soft" (softplus) or "none".')
parser.add_argument('--metric', default='euclidean', choices=loss.METRICS,
                    help='Distance between embeddings in the loss.')
parser.add_argument('--loss', default='batch_hard', choices=loss.LOSSES,
                    help='batch_hard: hardest positive and negative per anchor; batch_all: '
                         'mean over all valid triplets of the batch.')
parser.add_argument('--learning_rate', default=3e-4, type=common.positive_float,
                    help="Adam's initial learning rate.")
parser.add_argument('--train_iterations', default=25000, type=common.positive_int,
                    help='Number of training iterations (batches).')
parser.add_argument('--decay_start_iteration', default=15000, type=int,
                    help='Iteration from which the learning rate decays exponentially, reaching '
                         '0.001 x --learning_rate at --train_iterations; -1 (or a value >= '
                         '--train_iterations): no decay.')
parser.add_argument('--beta1_after_decay', default=None, type=common.positive_float,
                    help="Adam's beta1 from --decay_start_iteration on (the paper used 0.5); "
                         'default: keep 0.9 throughout, as the 2017 code did.')
parser.add_argument('--checkpoint_frequency', default=1000, type=common.nonnegative_int,
                    help='Save a checkpoint every this many iterations; 0: only the final one.')
parser.add_argument('--flip_augment', action='store_true', default=False,
                    help='Flip training images horizontally at random.')
parser.add_argument('--crop_augment', action='store_true', default=False,
                    help='Resize to the pre-crop size, then crop the net input size at random.')
parser.add_argument('--detailed_logs', action='store_true', default=False,
                    help='Also store every iteration\'s embeddings, losses and file names in '
                         'memory-mapped .npy files (detailed_*.npy) in the experiment root.')
parser.add_argument('--seed', default=None, type=common.nonnegative_int,
                    help='Seed of batch sampling, augmentation and initialisation; default: '
                         'drawn at random and stored in args.json, so --resume continues it.')
parser.add_argument('--deterministic', action='store_true', default=False,
                    help="TensorFlow's op determinism: with the same --seed, runs give "
                         'bit-identical weights, also when killed and resumed (costs speed on '
                         'GPUs, not measurably on CPUs; see the README).')
parser.add_argument('--keep_checkpoints', default=0, type=common.nonnegative_int,
                    help='Keep only the latest this many checkpoints; 0: keep all of them, as '
                         'the 2017 code did.')
parser.add_argument('--jit', action='store_true', default=False,
                    help='Compile the training step with XLA: for GPUs (2x slower on CPUs).')
parser.add_argument('--mixed_precision', default='none', choices=PRECISIONS,
                    help='Compute in bfloat16 or float16 (with dynamic loss scaling), keeping '
                         'float32 variables, embeddings, distances and loss; none: all float32.')
parser.add_argument('--distribute', default='none', choices=DISTRIBUTE,
                    help='none: one device. mirrored: all GPUs of this machine (else its CPU '
                         'devices). multiworker: one process per machine, the cluster and this '
                         'process\'s place in it given by the TF_CONFIG environment variable. '
                         'The PK batch is split over all replicas; the loss is that of the '
                         'whole batch.')
parser.add_argument('--sync_batch_norm', action=argparse.BooleanOptionalAction, default=None,
                    help='Batch norm statistics over the whole batch of all replicas, so that '
                         'training does not depend on how the batch is split; default: on with '
                         '--distribute mirrored or multiworker.')
parser.add_argument('--cluster_timeout', default=90, type=common.positive_float,
                    help='With --distribute multiworker: seconds to wait for every worker of '
                         'TF_CONFIG to connect before giving up.')

LN2 = math.log(2.0)
COLLAPSE_ITERATIONS = 100  # iterations at ln 2 before the collapse warning
HISTOGRAM_EVERY = 10  # iterations between TensorBoard histograms (scalars: every iteration)


# ----------------------------------------------------------------------------- helpers
def check_args(args: argparse.Namespace) -> None:
    """Raises common.InputError for settings that cannot work together."""
    if args.batch_p < 2 or args.batch_k < 2:
        raise common.InputError(f'--batch_p {args.batch_p} --batch_k {args.batch_k}: both must '
                                'be >= 2 (every anchor needs a positive and a negative)')
    start = args.decay_start_iteration
    if start < -1:  # at or after --train_iterations simply never decays
        raise common.InputError(f'--decay_start_iteration {start} must be -1 (no decay) or >= 0')
    if args.crop_augment:
        experiment.check_crop_size((args.net_input_height, args.net_input_width),
                                   (args.pre_crop_height, args.pre_crop_width))
    if args.beta1_after_decay is not None and not args.beta1_after_decay < 1:
        raise common.InputError(f'--beta1_after_decay {args.beta1_after_decay} must be below 1')
    for name in ('train_set', 'image_root'):
        if getattr(args, name) is None:
            raise common.InputError(f'--{name} is required (unless --resume)')
    if args.initial_checkpoint:  # readable, before the experiment root is written
        open_tf1_checkpoint(args.initial_checkpoint)
    check_precision(args.mixed_precision)  # before the experiment root is written
    if args.sync_batch_norm is None:  # args.json of a run from before the flag existed
        args.sync_batch_norm = args.distribute != 'none'


def cluster_task(args: argparse.Namespace) -> tuple[list[str], int]:
    """The workers' addresses and this process's index among them, from TF_CONFIG.

    Read before TensorFlow starts, to know whether this process is the chief (index 0),
    the one that writes into the experiment root. Without --distribute multiworker: ([], 0).

    Raises:
        common.InputError: TF_CONFIG is missing or not of the form TensorFlow expects.
    """
    if args.distribute != 'multiworker':
        return [], 0
    example = ('{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": '
               '"worker", "index": 0}}')
    try:
        config = json.loads(os.environ['TF_CONFIG'])
        workers = [str(address) for address in config['cluster']['worker']]
        task = config['task']
        index = int(task['index'])
        kind = task['type']
    except (KeyError, TypeError, ValueError) as e:
        raise common.InputError(f'--distribute multiworker needs the environment variable '
                                f'TF_CONFIG={example!r} (problem: {e!r})') from None
    if set(config['cluster']) != {'worker'} or kind != 'worker' or not 0 <= index < len(workers):
        raise common.InputError(f'TF_CONFIG {os.environ["TF_CONFIG"]!r}: expected only '
                                f'"worker" tasks and an index below their number, as in {example}')
    return workers, index


def learning_rate(iteration: int, base: float, decay_start: int, train_iterations: int) -> float:
    """The learning rate of 0-based `iteration`: `base` until `decay_start` (-1: forever), then
    base * 0.001 ** ((iteration - decay_start) / (train_iterations - decay_start)), which would
    reach 0.001 x base at `train_iterations` (the last iteration is train_iterations - 1)."""
    if decay_start < 0 or iteration < decay_start:
        return base
    return base * 0.001 ** ((iteration - decay_start) / (train_iterations - decay_start))


def pk_batches(labels: np.ndarray, batch_p: int, batch_k: int, seed: int):
    """Endless PK batches of dataset row indices.

    Each epoch shuffles the identities and cuts them into groups of P; the identities left
    over when P does not divide their number sit that epoch out (different ones every epoch,
    as in the 2017 code). Each identity gives K images: without replacement if it has >= K,
    otherwise all of its images equally often (concatenated shuffles), so repeats are balanced.

    Args:
        labels: (N,) int identity label of every dataset row, in [0, number of identities).
        batch_p, batch_k: P and K.
        seed: the same seed gives the same batches.

    Yields:
        (P*K,) int64 row indices, identity by identity (K consecutive rows share a label).
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind='stable')
    groups = np.split(order, np.cumsum(np.bincount(labels))[:-1])  # rows of each identity
    while True:
        identities = rng.permutation(len(groups))
        for start in range(0, len(groups) - batch_p + 1, batch_p):
            batch = []
            for identity in identities[start:start + batch_p]:
                rows = groups[identity]
                shuffles = [rng.permutation(len(rows)) for _ in range(-(-batch_k // len(rows)))]
                batch.append(rows[np.concatenate(shuffles)[:batch_k]])
            yield np.concatenate(batch).astype(np.int64)


def make_dataset(paths: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
                 start_iteration: int, worker: int = 0, workers: int = 1):
    """The training batches from `start_iteration` on, as a tf.data.Dataset.

    Batch i is the same whether the run started at 0 or was resumed at i, sampling and
    augmentation alike: the sampler is replayed up to i, and each image's random crop and
    flip are seeded by its position in the stream. With several workers each loads only its
    part of every batch (the worker'th of `workers` equal consecutive parts).

    Returns:
        Dataset of (images (b, H, W, 3) float32 in [0, 255], labels (b,) int32, rows (B,)
        int64: the whole batch's), B = P*K, b = B / workers, H and W the net input size.
    """
    import tensorflow as tf
    size = args.batch_p * args.batch_k
    share = size // workers
    mine = slice(worker * share, (worker + 1) * share)
    height, width = args.net_input_height, args.net_input_width

    def sampler():
        yield from itertools.islice(pk_batches(labels, args.batch_p, args.batch_k, args.seed),
                                    start_iteration, None)

    def my_rows():
        for rows in sampler():
            yield rows[mine]

    paths_t, labels_t = tf.constant(paths), tf.constant(labels, tf.int32)

    def load(position, row):
        image = common.read_image(paths_t[row])
        crop_seed = tf.stack([tf.constant(args.seed, tf.int64), 2 * position])
        flip_seed = crop_seed + tf.constant([0, 1], tf.int64)
        if args.crop_augment:
            image = common.resize_image(image, args.pre_crop_height, args.pre_crop_width)
            image = tf.image.stateless_random_crop(image, (height, width, 3), crop_seed)
        else:
            image = common.resize_image(image, height, width)
        if args.flip_augment:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return image, labels_t[row], row

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


def make_strategy(args: argparse.Namespace, workers: list[str]):
    """The tf.distribute strategy of --distribute, or None for one device.

    Must run before any other TensorFlow op: MultiWorkerMirroredStrategy configures the
    runtime's collective ops and its gRPC server when it is created.

    Raises:
        common.InputError: the other workers did not all connect within --cluster_timeout.
    """
    import tensorflow as tf
    if args.distribute == 'none':
        return None
    if args.distribute == 'mirrored':
        # MirroredStrategy() takes the GPUs, or only the first CPU device when there are none;
        # all CPU devices instead lets the tests split a batch over logical CPUs.
        gpus = tf.config.list_logical_devices('GPU')
        return tf.distribute.MirroredStrategy(
            [d.name for d in gpus or tf.config.list_logical_devices('CPU')])
    # With TensorFlow's defaults a worker waits for the others for ever (and ignores SIGTERM
    # meanwhile); a registration deadline with a barrier makes every worker give up alike.
    # The strategy keeps a coordination service configured before it is created.
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context
    context.context().configure_coordination_service(
        service_type='standalone', service_leader='/job:worker/replica:0/task:0',
        cluster_register_timeout_in_ms=int(args.cluster_timeout * 1000),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name='worker',
                                                                 num_tasks=len(workers))])
    context.context().coordination_service.cluster_register_with_barrier = True
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (tf.errors.OpError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise common.InputError(f'--distribute multiworker: not all workers of TF_CONFIG '
                                f'({", ".join(workers)}) connected within --cluster_timeout '
                                f'{args.cluster_timeout:g} s ({first})') from None


def chief_value(strategy, value: int) -> int:
    """The chief's `value` (its replica 0's), on every worker: e.g. a seed each one drew."""
    import tensorflow as tf

    def mine(value):
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return tf.where(first, value, tf.zeros_like(value))
    shares = strategy.run(mine, (tf.constant(value, tf.int64),))
    return int(strategy.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None).numpy())


def gather_replicas(context, value):
    """All replicas' `value` (b, ...), concatenated in replica order: (replicas * b, ...).

    What ReplicaContext.all_gather does, as an all-reduce of a (replicas, b, ...) tensor that
    is zero but for this replica's slot: all_gather of the step's embeddings fails while
    tracing under MultiWorkerMirroredStrategy with one device per worker ("destinations can
    not be empty": TensorFlow 2.21 gathers to the input tensor's device, unset in the graph).
    The gradient is the same as all_gather's: the all-reduce (sum) of the replicas'
    gradients, of which each keeps its own slot.
    """
    import tensorflow as tf
    slot = tf.one_hot(context.replica_id_in_sync_group, context.num_replicas_in_sync,
                      dtype=value.dtype)  # (replicas,)
    spread = slot[(slice(None),) + (None,) * value.shape.rank] * value[None]
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, spread)
    return tf.reshape(total, tf.concat([[-1], tf.shape(value)[1:]], 0))


def replica_gradients(model, images, pids, loss_name: str, margin, metric: str, optimizer=None):
    """One replica's gradients of the loss, and what the log reports about the whole batch.

    Runs in a replica context (or without a strategy). The replicas' gradients sum to the
    gradient of the batch's mean loss (see make_train_step): the sum that Keras' optimizer
    applies.

    Args:
        images: (b, H, W, 3) this replica's share of the batch; pids: (b,) its identities.
        loss_name, margin, metric: as for make_train_step.
        optimizer: its scale_loss scales the objective (float16: the dynamic loss scale).

    Returns:
        (grads, out): grads of model.trainable_variables; out with `loss` (), `losses` (B,),
        `emb` (B, D), `dists` (B, B), `pids` (B,) and loss.batch_metrics of the whole batch.
    """
    import tensorflow as tf
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    with tf.GradientTape() as tape:
        own_emb = model(images, training=True)['emb']  # (b, D)
        emb, all_pids = own_emb, pids
        if replicas > 1:
            emb = gather_replicas(context, own_emb)  # (B, D), replica by replica
            all_pids = gather_replicas(context, pids)
        dists = loss.cdist(emb, emb, metric)
        losses = getattr(loss, loss_name)(dists, all_pids, margin)
        total = objective = tf.reduce_mean(losses)
        if replicas > 1:
            own = tf.shape(own_emb)[0]
            first = context.replica_id_in_sync_group * own
            objective = tf.reduce_sum(losses[first:first + own]) / tf.cast(
                tf.shape(losses)[0], losses.dtype)
        if model.losses:  # weight decay, if a net or head asks for it
            total += tf.add_n(model.losses)
            objective += tf.add_n(model.losses) / replicas
        scaled = optimizer.scale_loss(objective) if optimizer else objective  # float16
    grads = tape.gradient(scaled, model.trainable_variables)
    return grads, {'loss': total, 'losses': losses, 'emb': emb, 'dists': dists,
                   'pids': all_pids, **loss.batch_metrics(dists, all_pids, losses)}


def make_train_step(model, optimizer, loss_name: str, margin, metric: str, jit: bool = False,
                    strategy=None, worker: int = 0):
    """The compiled training step: one Adam update on a PK batch.

    Under a strategy the batch is split over the replicas, each embeds its share, the
    embeddings and identities of all replicas are gathered, and each replica takes the loss
    of its own anchors against the whole batch. The gather's gradient sums the replicas'
    gradients of the gathered embeddings, and the optimizer sums the replicas' weight
    gradients: so each replica's objective is its anchors' share of the batch mean, and the
    update equals that of one device on the whole batch.

    Args:
        model: from model.build_model (built in the strategy's scope); `emb` is trained.
        optimizer: a Keras optimizer, built on model.trainable_variables.
        loss_name: a name in loss.LOSSES. margin: a float, 'soft' or 'none'. metric: loss.METRICS.
        jit: compile with XLA.
        strategy: a tf.distribute strategy from make_strategy, or None for one device.
        worker: this process's index among the workers (multiworker): its images are the
            worker'th of equal consecutive parts of the batch.

    Returns:
        step(images (b, H, W, 3) float32 in [0, 255], pids (b,) int, stop=False) -> dict with
        `loss` () (the optimised mean), `losses` (B,), `emb` (B, D), `dists` (B, B),
        `grads_finite` () bool, `stop` () bool (true if any worker's `stop` was) and the
        entries of loss.batch_metrics, all of the whole batch (B = P*K); b = B / workers.
    """
    import keras
    import tensorflow as tf
    loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images, pids, stop):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        grads, out = replica_gradients(model, images, pids, loss_name, margin, metric,
                                       optimizer)
        nonfinite = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.int32))
                              for g in grads])
        if replicas > 1:  # every replica stops on any replica's NaN, or any worker's signal
            flags = tf.stack([nonfinite, tf.cast(stop, tf.int32)])  # one tensor on the device
            nonfinite, stop = tf.unstack(context.all_reduce(tf.distribute.ReduceOp.SUM, flags))
        grads_finite = nonfinite == 0
        if loss_scaling:  # an overflow of the scaled loss: the optimizer skips the step and
            grads_finite |= optimizer.dynamic_scale > 1  # halves the scale; at 1, stop
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return {**out, 'grads_finite': grads_finite, 'stop': tf.cast(stop, tf.bool)}

    if strategy is None:
        one_device = tf.function(replica_step, jit_compile=jit)
        return lambda images, pids, stop=False: one_device(images, pids, tf.constant(stop))

    local = len(strategy.extended.worker_devices)  # this worker's replicas
    # A tf.function inside strategy.run fails under MultiWorkerMirroredStrategy ("destinations
    # can not be empty"): only --jit needs one there, to compile each replica's step.
    replica_fn = tf.function(replica_step, jit_compile=True) if jit else replica_step
    run = tf.function(lambda images, pids, stop: strategy.run(replica_fn, (images, pids, stop)))

    def step(images, pids, stop=False):
        share = len(images) // local

        def part(values):
            def of_replica(context):
                index = context.replica_id_in_sync_group - worker * local
                return values[index * share:(index + 1) * share]
            return strategy.experimental_distribute_values_from_function(of_replica)
        out = run(part(images), part(pids), tf.constant(stop))
        return {name: strategy.experimental_local_results(value)[0]
                for name, value in out.items()}
    return step


def open_detailed_logs(root: Path, iterations: int, batch: int, dim: int, fid_bytes: int,
                       fresh: bool) -> dict:
    """Memory-mapped per-iteration records: row i holds iteration i's batch.

    detailed_emb.npy (T, B, D) float32, detailed_loss.npy (T, B) float32 and
    detailed_fids.npy (T, B) bytes. They are sparse files: rows not yet trained read as 0.
    """
    specs = {'emb': ((iterations, batch, dim), np.float32),
             'loss': ((iterations, batch), np.float32),
             'fids': ((iterations, batch), f'S{fid_bytes}')}
    logs = {}
    for name, (shape, dtype) in specs.items():
        path = root / f'detailed_{name}.npy'
        if fresh or not path.exists():
            logs[name] = np.lib.format.open_memmap(path, 'w+', dtype, shape)
        else:
            logs[name] = np.load(path, mmap_mode='r+', allow_pickle=False)
    return logs


def collapsed(losses: np.ndarray, margin) -> bool:
    """True if a soft-margin batch looks collapsed: every anchor's loss at ln 2 (d_pos = d_neg)."""
    return margin == 'soft' and bool(np.all(np.abs(losses - LN2) < 0.01))




def settings() -> tuple[argparse.Namespace, list[str], bool]:
    """The run's settings: the command line's, or with --resume those of its args.json.

    Returns:
        (args, notes, chief): `notes` are warnings to log once the log file is open; `chief`
        is False for the workers of --distribute multiworker but the first, which write
        nothing into the experiment root (and so do not check that it is empty).
    """
    args = parser.parse_args()
    experiment.check_unlocked(Path(args.experiment_root).expanduser())  # a live run: say so first
    notes = experiment.resume_args(args, sys.argv[1:], parser) if args.resume else []
    check_args(args)
    chief = cluster_task(args)[1] == 0
    if not args.resume and chief:
        root = Path(args.experiment_root).expanduser()
        if root.exists() and (not root.is_dir() or any(
                p.name != experiment.LOCK_FILE for p in root.iterdir())):
            raise common.InputError(f'--experiment_root {root} is not empty; pass --resume to '
                                    'continue that run, or choose a new folder')
    if args.seed is None:  # multiworker: every worker takes the chief's (see main)
        args.seed = int(np.random.SeedSequence().entropy % 2**31)
    return args, notes, chief


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


def stop_requests(log) -> list:
    """Makes SIGINT / SIGTERM ask the loop to finish its iteration, save and exit 0.

    Returns:
        The list that each received signal is appended to: the loop stops when it is not empty.
    """
    stop = []

    def request_stop(signum, frame):
        if not stop:
            log.info('%s received: stopping after this iteration', signal.Signals(signum).name)
        stop.append(signum)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def build_training(args: argparse.Namespace, root: Path, log, strategy=None,
                   saves_to: Path | None = None):
    """The model, Adam, and the checkpoint manager, restored (--resume) or initialised.

    A fresh run (or a resumed one without a checkpoint) loads --initial_checkpoint, if given,
    and saves the initialisation as checkpoint-0.

    Args:
        strategy: from make_strategy; the variables are created in its scope.
        saves_to: where checkpoints are saved, if not in `root` (the workers but the chief
            must save too, into a folder of their own); restored from `root` all the same.

    Returns:
        (model, optimizer, step, manager): `step` the tf.Variable of iterations done.
    """
    import keras
    import tensorflow as tf
    if args.deterministic:  # before any op runs; kernels without a deterministic version fail
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(args.seed)  # the initialisation; batches are seeded apart
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model(args.model_name, args.head_name, args.embedding_dim,
                            args.mixed_precision)
        for layer in model.layers:
            if hasattr(layer, 'synchronized'):  # layers.BatchNorm
                layer.synchronized = args.sync_batch_norm
        # TF1's Adam (which the 2017 code used) has epsilon 1e-8; Keras' default is 1e-7.
        optimizer = keras.optimizers.Adam(learning_rate=args.learning_rate, epsilon=1e-8)
        if args.mixed_precision == 'float16':  # small gradients underflow float16 unless scaled
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)  # so that its slots are in every checkpoint
        if args.mixed_precision != 'none':
            log.info('mixed precision: layers compute in %s%s; variables, embeddings, distances '
                     'and the loss are float32', args.mixed_precision,
                     ' with dynamic loss scaling' * (args.mixed_precision == 'float16'))
        removed = experiment.remove_partial_checkpoints(saves_to or root)
        if removed:
            log.warning('removed %s: the partial checkpoint of a run killed while saving',
                        ', '.join(removed))
        step, manager = experiment.training_checkpoint(saves_to or root, model, optimizer,
                                                       args.keep_checkpoints)
    latest = (experiment.restore_training(manager, f'{args.model_name} + {args.head_name}',
                                          root if saves_to else None) if args.resume else None)
    if latest:
        log.info('resuming from %s: iteration %d on', latest, int(step.numpy()) + 1)
    else:
        if args.resume:
            log.warning('no checkpoint in %s: starting from the initialisation', root)
        if args.initial_checkpoint:
            load_tf1_checkpoint(model, args.initial_checkpoint, log)
        save(manager, None, 0, log)
    return model, optimizer, step, manager


class Reporter:
    """Everything reported per iteration: the log line, TensorBoard, detailed logs, collapse."""

    def __init__(self, root: Path | None, args: argparse.Namespace, fids: np.ndarray, start: int,
                 log):
        """root: where TensorBoard and the detailed logs go; None: only the log line."""
        import tensorflow as tf
        self.args, self.log = args, log
        self.batch = args.batch_p * args.batch_k
        self.writer = (tf.summary.create_file_writer(str(root)) if root
                       else tf.summary.create_noop_writer())
        self.detailed = None
        if args.detailed_logs and root:
            fid_bytes = max(len(fid.encode()) for fid in fids)
            self.detailed = open_detailed_logs(root, args.train_iterations, self.batch,
                                               args.embedding_dim, fid_bytes, fresh=start == 0)
            self.fids_bytes = np.array([fid.encode() for fid in fids])
        self.durations = []
        self.collapse_streak = 0
        self.last = time.time()

    def __call__(self, iteration: int, out: dict, lr: float, rows) -> None:
        """Reports 0-based `iteration`: the train step's outputs `out`, its batch's `rows`."""
        import tensorflow as tf
        args, losses = self.args, out['losses'].numpy()
        now = time.time()
        self.durations.append(now - self.last)
        self.last = now
        recent = self.durations[1:][-50:] or self.durations  # the first includes tracing
        seconds = float(np.mean(recent))
        top1, prec = float(out['top1'].numpy().mean()), float(out['prec_at_k'].numpy().mean())
        active = int(out['active'].numpy())
        self.log.info('iter %d/%d: loss min %.3f mean %.3f max %.3f, top-1 %.1f%%, prec@%d '
                      '%.1f%%, active %d/%d, lr %.3g, %.3f s/it, ETA %s', iteration + 1,
                      args.train_iterations, losses.min(), losses.mean(), losses.max(),
                      100 * top1, args.batch_k - 1, 100 * prec, active, self.batch, lr, seconds,
                      timedelta(seconds=round(seconds * (args.train_iterations - iteration - 1))))

        with self.writer.as_default(step=iteration + 1):
            for name, value in {'loss': losses.mean(), 'batch/top1': top1,
                                f'batch/prec_at_{args.batch_k - 1}': prec,
                                'batch/active_count': active,
                                'batch/active_fraction': out['active_fraction'].numpy(),
                                'learning_rate': lr,
                                'seconds_per_iteration': self.durations[-1]}.items():
                tf.summary.scalar(name, value)
            if iteration % HISTOGRAM_EVERY == 0:
                norms = np.linalg.norm(out['emb'].numpy().astype(np.float64), axis=1)
                for name, values in {'losses': losses, 'dists/positive': out['pos_dists'],
                                     'dists/negative': out['neg_dists'],
                                     'emb_norm': norms}.items():
                    tf.summary.histogram(name, values)
        if self.detailed is not None:
            self.detailed['emb'][iteration] = out['emb'].numpy()
            self.detailed['loss'][iteration] = losses
            self.detailed['fids'][iteration] = self.fids_bytes[rows.numpy()]

        self.collapse_streak = self.collapse_streak + 1 if collapsed(losses, args.margin) else 0
        if self.collapse_streak == COLLAPSE_ITERATIONS:
            self.log.warning(
                'the soft-margin loss has been stuck at ln 2 = 0.693 for %d iterations: the '
                'embeddings have collapsed (all distances near zero) and will hardly recover. '
                'What usually helps: start from pretrained weights (--initial_checkpoint), a '
                'lower --learning_rate, other --batch_p / --batch_k, and checking that the '
                'images of an identity are one person.', COLLAPSE_ITERATIONS)

    def flush(self) -> None:
        """Writes what is buffered to disk, before a checkpoint is saved and at the end."""
        self.writer.flush()
        if self.detailed is not None:
            for array in self.detailed.values():
                array.flush()


def finite(out: dict, iteration: int, batch_fids: np.ndarray, root: Path | None, latest: str,
           log) -> bool:
    """True if a train step's losses, distances and gradients are finite; else writes the
    batch's file names to `nonfinite_batch_<iteration>.txt` in `root` (unless None) and logs
    one line why training stops.

    Distances overflow before the loss does (inf - inf makes the loss NaN only later).
    """
    losses = out['losses'].numpy()
    culprits = [name for name, ok in (
        ('the loss', np.all(np.isfinite(losses))),
        ('the embedding distances', np.all(np.isfinite(out['dists'].numpy()))),
        ('the gradients', bool(out['grads_finite'].numpy()))) if not ok]
    if not culprits:
        return True
    batch_file = root / f'nonfinite_batch_{iteration + 1}.txt' if root else 'the chief\'s root'
    if root:
        with common.atomic_write(batch_file) as tmp:
            tmp.write_text(''.join(f'{fid}\n' for fid in batch_fids), encoding='utf-8')
    log.error('%s not finite at iteration %d (loss mean %s); stopping without saving, the '
              'latest checkpoint is %s; the batch is listed in %s. Try a lower --learning_rate.',
              ' and '.join(culprits), iteration + 1, losses.mean(), latest, batch_file)
    return False


def save(manager, report: Reporter | None, done: int, log) -> int:
    """Saves checkpoint-<done>, after flushing the logs it belongs with; returns `done`.

    Raises:
        common.InputError: the checkpoint cannot be written (a full disk, a file size limit):
            its partial files are removed and the latest checkpoint stays the previous one.
    """
    import tensorflow as tf
    previous = manager.latest_checkpoint
    try:
        if report is not None:
            report.flush()
        manager.save(checkpoint_number=done)
    except (tf.errors.OpError, OSError) as e:
        prefix = Path(manager.directory) / f'{experiment.CHECKPOINT_NAME}-{done}'
        for partial in prefix.parent.glob(f'{prefix.name}[._]*'):
            if partial.is_dir():  # TensorFlow's temporary folder of the shards
                shutil.rmtree(partial)
            else:
                partial.unlink(missing_ok=True)
        message = getattr(e, 'message', None) or getattr(e, 'strerror', None) or str(e)
        raise common.InputError(f'cannot save {prefix}: {message.strip().splitlines()[0]}; the '
                                f'latest checkpoint is still {previous}') from None
    log.info('saved %s', manager.latest_checkpoint)
    return done


# ----------------------------------------------------------------------------- main
def main():
    # Settings: fresh runs store them, --resume reads them back.
    args, notes, chief = settings()
    root = Path(args.experiment_root).expanduser()

    # Devices: the strategy comes before any other TensorFlow op (it may connect to others).
    workers, worker = cluster_task(args)
    strategy = make_strategy(args, workers)
    if strategy is not None:
        replicas = strategy.num_replicas_in_sync
        batch = args.batch_p * args.batch_k
        if batch % replicas:
            fits = [p for p in range(2, 4 * args.batch_p) if p * args.batch_k % replicas == 0]
            raise common.InputError(f'--batch_p {args.batch_p} x --batch_k {args.batch_k} = '
                                    f'{batch} images cannot be split evenly over {replicas} '
                                    f'replicas; with this --batch_k, --batch_p can be '
                                    f'{", ".join(map(str, fits[:5]))}, ...')
        if workers:
            args.seed = chief_value(strategy, args.seed)

    # Data: every problem is found before anything is written or trained.
    data = load_training_data(args)
    if not chief:  # writes nothing into the root: its checkpoints go to a folder of its own
        with tempfile.TemporaryDirectory(prefix='train-worker-') as saves_to:
            return train(args, root, data, notes, strategy, Path(saves_to))

    # One run per experiment root: a second one refuses, naming the first's PID.
    root.mkdir(parents=True, exist_ok=True)
    with experiment.locked(root) as took_over:
        return train(args, root, data, notes + ([took_over] if took_over else []), strategy)


def train(args: argparse.Namespace, root: Path, data: tuple, notes: list[str], strategy=None,
          saves_to: Path | None = None) -> int:
    """Trains on `data` from load_training_data; returns the exit code.

    Args:
        root: the experiment root, locked by this process unless `saves_to` is given.
        strategy: from make_strategy, or None for one device.
        saves_to: for a multiworker process other than the chief: where its checkpoints go;
            it writes nothing into `root` then (no args.json, log file or TensorBoard).
    """
    fids, paths, labels, checked = data
    chief = saves_to is None
    workers, worker = cluster_task(args)
    if not args.resume and chief:
        experiment.write_args(root, args)
    log = common.setup_logging(root / 'train.log' if chief else None)
    log.info('%s training in %s with %s', 'resuming' if args.resume else 'starting', root,
             ', '.join(f'{k}={v}' for k, v in sorted(vars(args).items())))
    for note in notes:
        log.warning(note)
    log.info('%d images of %d identities, all decodable (checked in %.1f s)', len(fids),
             labels.max() + 1, checked)
    if strategy is not None:
        log.info('--distribute %s: %d replicas (%s)%s', args.distribute,
                 strategy.num_replicas_in_sync, ', '.join(strategy.extended.worker_devices),
                 f', worker {worker} of {len(workers)}' if workers else '')
    stop = stop_requests(log)

    # Model, optimizer, checkpoints, input pipeline.
    model, optimizer, step, manager = build_training(args, root, log, strategy, saves_to)
    start = saved = int(step.numpy())
    dataset = make_dataset(paths, labels, args, start, worker, max(1, len(workers)))
    beta1_switch = args.beta1_after_decay is not None and args.decay_start_iteration >= 0
    adam = getattr(optimizer, 'inner_optimizer', optimizer)  # float16: inside the loss scaler
    if beta1_switch and start >= args.decay_start_iteration:
        adam.beta_1 = args.beta1_after_decay
    train_step = make_train_step(model, optimizer, args.loss, args.margin, args.metric, args.jit,
                                 strategy, worker)
    if start >= args.train_iterations:
        log.info('the run is already complete (%d iterations)', start)

    # Training loop.
    report = Reporter(root if chief else None, args, fids, start, log)
    for iteration, (images, batch_labels, rows) in zip(
            range(start, args.train_iterations), dataset, strict=False):
        if stop and strategy is None:
            break  # under a strategy, all replicas stop together after the step (see below)
        if beta1_switch and iteration == args.decay_start_iteration:
            adam.beta_1 = args.beta1_after_decay  # read when tracing: trace again
            train_step = make_train_step(model, optimizer, args.loss, args.margin, args.metric,
                                         args.jit, strategy, worker)
            log.info("Adam's beta1 is now %g", args.beta1_after_decay)
        lr = learning_rate(iteration, args.learning_rate, args.decay_start_iteration,
                           args.train_iterations)
        optimizer.learning_rate = lr
        out = train_step(images, batch_labels, bool(stop))
        if not finite(out, iteration, fids[rows.numpy()], root if chief else None,
                      manager.latest_checkpoint, log):
            return 1
        step.assign(iteration + 1)
        report(iteration, out, lr, rows)
        if args.checkpoint_frequency and (iteration + 1) % args.checkpoint_frequency == 0:
            saved = save(manager, report, iteration + 1, log)
        if strategy is not None and out['stop']:
            break  # some worker was asked to stop: all stop after this same iteration

    # Final (or interrupted) save.
    done = int(step.numpy())
    if done != saved:
        save(manager, report, done, log)
    report.flush()
    if done < args.train_iterations:
        log.info('stopped after iteration %d of %d; continue with: python train.py '
                 '--experiment_root %s --resume', done, args.train_iterations, root)
    else:
        log.info('training done: %d iterations', done)
    return 0


if __name__ == '__main__':
    common.run(main)
