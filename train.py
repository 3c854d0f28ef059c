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
import sys
import tempfile
from pathlib import Path

import numpy as np

import batches
import common
import experiment
import loss
import replicas
import schedule
from model import (PRECISIONS, build_model, check_initial_checkpoint, check_precision,
                   has_classifier, load_initial_checkpoint)
from reporting import Reporter, finite

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
                    help='TF1 checkpoint with slim names (e.g. the ImageNet resnet_v1_50.ckpt), '
                         "or Keras' ImageNet ResNet-50 weights (.h5, .weights.h5), to initialise "
                         'the backbone from; default: random initialisation.')
batches.add_flags(parser.add_argument_group('PK batches and augmentation'))
parser.add_argument('--margin', default='soft', type=common.float_or_string(loss.MARGINS),
                    help='Triplet margin: a number >= 0 (hinge), "soft" (softplus) or "none".')
parser.add_argument('--metric', default='euclidean', choices=loss.METRICS,
                    help='Distance between embeddings in the loss.')
parser.add_argument('--loss', default='batch_hard', choices=loss.LOSSES,
                    help='batch_hard: hardest positive and negative per anchor; batch_all: '
                         'mean over all valid triplets of the batch.')
loss.add_flags(parser.add_argument_group('beside the triplet loss (the strong baseline)'))
schedule.add_flags(parser.add_argument_group('learning-rate schedule'))
parser.add_argument('--checkpoint_frequency', default=1000, type=common.nonnegative_int,
                    help='Save a checkpoint every this many iterations; 0: only the final one.')
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
replicas.add_flags(parser.add_argument_group('several devices'))
# Not a flag: the training identities when the head has a classifier, stored in args.json.
parser.set_defaults(num_classes=None)


# ----------------------------------------------------------------------------- helpers
def check_args(args: argparse.Namespace) -> None:
    """Raises common.InputError for settings that cannot work together."""
    if args.batch_p < 2 or args.batch_k < 2:
        raise common.InputError(f'--batch_p {args.batch_p} --batch_k {args.batch_k}: both must '
                                'be >= 2 (every anchor needs a positive and a negative)')
    if args.crop_augment:
        experiment.check_crop_size((args.net_input_height, args.net_input_width),
                                   (args.pre_crop_height, args.pre_crop_width))
    for name in ('train_set', 'image_root'):
        if getattr(args, name) is None:
            raise common.InputError(f'--{name} is required (unless --resume)')
    if args.initial_checkpoint:  # readable, before the experiment root is written
        check_initial_checkpoint(args.initial_checkpoint)
    if args.id_loss_weight > 0 and not has_classifier(args.head_name):
        raise common.InputError(f'--id_loss_weight {args.id_loss_weight:g}: --head_name '
                                f'{args.head_name} has no identity classifier (bnneck has)')
    schedule.check_args(args)
    check_precision(args.mixed_precision)  # before the experiment root is written
    if args.sync_batch_norm is None:  # args.json of a run from before the flag existed
        args.sync_batch_norm = args.distribute != 'none'


def set_classes(args: argparse.Namespace, labels: np.ndarray) -> None:
    """Sets args.num_classes, the classifier's size, to the training identities when the ID
    loss needs a classifier (else None); --resume checks that they are still as many.

    Raises:
        common.InputError: a resumed run whose training set has another number of identities.
    """
    classes = int(labels.max()) + 1 if args.id_loss_weight > 0 else None
    if args.resume and args.num_classes is not None and args.num_classes != classes:
        raise common.InputError(f'--resume: args.json has a classifier of {args.num_classes} '
                                f'identities, the training set {classes}')
    args.num_classes = classes


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
    chief = replicas.cluster_task(args)[1] == 0
    if not args.resume and chief:
        experiment.check_empty(Path(args.experiment_root).expanduser())
    if args.seed is None:  # multiworker: every worker takes the chief's (see main)
        args.seed = int(np.random.SeedSequence().entropy % 2**31)
    return args, notes, chief


def start_log(args: argparse.Namespace, root: Path, chief: bool, notes: list[str]):
    """Writes args.json (a fresh run's chief), opens train.log (the chief's) and logs the
    settings and `notes`; returns the logger."""
    if not args.resume and chief:
        experiment.write_args(root, args)
    log = common.setup_logging(root / 'train.log' if chief else None)
    log.info('%s training in %s with %s', 'resuming' if args.resume else 'starting', root,
             ', '.join(f'{k}={v}' for k, v in sorted(vars(args).items())))
    for note in notes:
        log.warning(note)
    return log


def build_training(args: argparse.Namespace, root: Path, log, classes: int, strategy=None,
                   saves_to: Path | None = None):
    """The model, Adam, and the checkpoint manager, restored (--resume) or initialised.

    A fresh run (or a resumed one without a checkpoint) loads --initial_checkpoint, if given,
    and saves the initialisation as checkpoint-0.

    Args:
        classes: the training identities (the center loss's centres).
        strategy: from make_strategy; the variables are created in its scope.
        saves_to: where checkpoints are saved, if not in `root` (the workers but the chief
            must save too, into a folder of their own); restored from `root` all the same.

    Returns:
        (model, optimizer, step, manager, centres): `step` the tf.Variable of iterations done;
        `centres` the center loss's (saved in the checkpoints), or None.
    """
    import keras
    import tensorflow as tf
    if args.deterministic:  # before any op runs; kernels without a deterministic version fail
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(args.seed)  # the initialisation; batches are seeded apart
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model(args.model_name, args.head_name, args.embedding_dim,
                            args.mixed_precision, **experiment.model_options(args))
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
        extra = {}
        if args.center_loss_weight:  # one centre per training identity, of what f is
            f = model.output.get('train_emb', model.output['emb'])
            extra['centres'] = replicas.make_centres(classes, f.shape[-1])
        step, manager = experiment.training_checkpoint(saves_to or root, model, optimizer,
                                                       args.keep_checkpoints, log, **extra)
    latest = (experiment.restore_training(manager, f'{args.model_name} + {args.head_name}',
                                          root if saves_to else None) if args.resume else None)
    if latest:
        log.info('resuming from %s: iteration %d on', latest, int(step.numpy()) + 1)
    else:
        if args.resume:
            log.warning('no checkpoint in %s: starting from the initialisation', root)
        if args.initial_checkpoint:
            load_initial_checkpoint(model, args.initial_checkpoint, log)
        save(manager, None, 0, log)
    if args.beta1_after_decay is not None and 0 <= args.decay_start_iteration <= step.numpy():
        adam(optimizer).beta_1 = args.beta1_after_decay
    return model, optimizer, step, manager, extra.get('centres')


def adam(optimizer):
    """The Adam inside `optimizer` (float16: inside the loss scaler)."""
    return getattr(optimizer, 'inner_optimizer', optimizer)


def save(manager, report: Reporter | None, done: int, log) -> int:
    """Saves checkpoint-<done>, after flushing the logs it belongs with; returns `done`."""
    experiment.save_checkpoint(manager, done, report.flush if report else None)
    log.info('saved %s', manager.latest_checkpoint)
    return done


# ----------------------------------------------------------------------------- main
def main():
    # Settings: fresh runs store them, --resume reads them back.
    args, notes, chief = settings()
    root = Path(args.experiment_root).expanduser()

    # Devices: the strategy comes before any other TensorFlow op (it may connect to others).
    workers, worker = replicas.cluster_task(args)
    strategy = replicas.make_strategy(args, workers)
    if strategy is not None:
        replicas.check_split(strategy, args.batch_p, args.batch_k)
        if workers:
            args.seed = replicas.chief_value(strategy, args.seed)

    # Data: every problem is found before anything is written or trained.
    data = batches.load_training_data(args)
    set_classes(args, data[2])
    if not chief:  # writes nothing into the root: its checkpoints go to a folder of its own
        with tempfile.TemporaryDirectory(prefix='train-worker-') as saves_to:
            return train(args, root, data, notes, strategy, Path(saves_to))

    # One run per experiment root: a second one refuses, naming the first's PID.
    root.mkdir(parents=True, exist_ok=True)
    with experiment.locked(root) as took_over:
        return train(args, root, data, notes + ([took_over] if took_over else []), strategy)


def train(args: argparse.Namespace, root: Path, data: tuple, notes: list[str], strategy=None,
          saves_to: Path | None = None) -> int:
    """Trains on `data` from batches.load_training_data; returns the exit code.

    Args:
        root: the experiment root, locked by this process unless `saves_to` is given.
        strategy: from replicas.make_strategy, or None for one device.
        saves_to: for a multiworker process other than the chief: where its checkpoints go;
            it writes nothing into `root` then (no args.json, log file or TensorBoard).
    """
    fids, paths, labels, checked = data
    chief = saves_to is None
    workers, worker = replicas.cluster_task(args)
    log = start_log(args, root, chief, notes)
    log.info('%d images of %d identities, all decodable (checked in %.1f s)', len(fids),
             labels.max() + 1, checked)
    replicas.log_devices(strategy, args, log)
    stop = common.stop_requests(log)

    # Model, optimizer, checkpoints, input pipeline.
    classes = int(labels.max()) + 1
    model, optimizer, step, manager, centres = build_training(args, root, log, classes,
                                                              strategy, saves_to)
    start = saved = int(step.numpy())
    dataset = batches.make_dataset(paths, labels, args, start, worker, max(1, len(workers)))

    def make_step():  # again when beta1 changes: it is read when tracing
        return replicas.make_train_step(model, optimizer, args.loss, args.margin, args.metric,
                                        args.jit, strategy, worker,
                                        replicas.extras_of(args, centres))
    train_step = make_step()
    if start >= args.train_iterations:
        log.info('the run is already complete (%d iterations)', start)

    # Training loop.
    report = Reporter(root if chief else None, args, fids, start, log)
    for iteration, (images, batch_labels, rows) in zip(
            range(start, args.train_iterations), dataset, strict=False):
        if stop and strategy is None:
            break  # under a strategy, all replicas stop together after the step (see below)
        if iteration == args.decay_start_iteration and args.beta1_after_decay is not None:
            adam(optimizer).beta_1 = args.beta1_after_decay
            train_step = make_step()
            log.info("Adam's beta1 is now %g", args.beta1_after_decay)
        lr = schedule.rate_of(args, iteration)
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

    finish(manager, report, int(step.numpy()), saved, args, root, log)
    return 0


def finish(manager, report: Reporter, done: int, saved: int, args: argparse.Namespace,
           root: Path, log) -> None:
    """The final (or interrupted) save, unless `done` was just saved, and how the run ended."""
    if done != saved:
        save(manager, report, done, log)
    report.flush()
    if done < args.train_iterations:
        log.info('stopped after iteration %d of %d; continue with: python train.py '
                 '--experiment_root %s --resume', done, args.train_iterations, root)
    else:
        log.info('training done: %d iterations', done)


if __name__ == '__main__':
    common.run(main)
