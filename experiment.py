"""The experiment root: args.json (write, read, merge) and checkpoints (name, list, restore).

train.py and embed.py talk to each other only through these files. TensorFlow is imported
inside the functions that need it, so that mistakes in flags are reported without its import.
"""
import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import common
from model import NET_OPTIONS, load_tf1_checkpoint, plugin_names

ARGS_FILE = 'args.json'
LOCK_FILE = 'train.lock'  # held by the train.py that writes into the root; holds its PID
CHECKPOINT_NAME = 'checkpoint'  # files checkpoint-<iterations done>.index/.data-*
# Flags that --resume does not take from args.json: the cluster's time-out is the machines'.
NEVER_COMPARED = ('resume', 'experiment_root', 'cluster_timeout')
# The settings of the trained model that embed.py takes from args.json unless given. Only
# these are read: the training flags flip_augment and crop_augment must not switch on
# test-time augmentation. num_classes is no flag: train.py stores the number of training
# identities there when the head has a classifier (the ID loss), so that its checkpoints
# restore into the same model.
MODEL_SETTINGS = {'model_name': str, 'head_name': str, 'embedding_dim': int,
                  'net_input_height': int, 'net_input_width': int,
                  'pre_crop_height': int, 'pre_crop_width': int, 'image_root': str,
                  'last_stride': int, 'pooling': str, 'resnet_layout': str, 'num_classes': int}
# The net options of model.NET_OPTIONS by their args.json names; roots from before a flag
# existed (and the 2017 roots) were trained with its first choice.
NET_OPTION_FLAGS = {'last_stride': 'last_stride', 'pooling': 'pooling',
                    'resnet_layout': 'layout'}


# ----------------------------------------------------------------------------- flags
def add_model_flags(parser, defaults: dict) -> None:
    """Adds the flags that define the model and its input size, shared by train.py and embed.py.

    Args:
        parser: an argparse parser or argument group.
        defaults: the default of each flag (model_name, head_name, embedding_dim,
            net_input_height, net_input_width, pre_crop_height, pre_crop_width, and optionally
            last_stride, pooling, resnet_layout: else the 2017 net's); embed.py passes None
            for all, meaning "from args.json".
    """
    parser.add_argument('--model_name', default=defaults['model_name'],
                        choices=plugin_names('nets'), help='Backbone, a module of nets/.')
    parser.add_argument('--head_name', default=defaults['head_name'],
                        choices=plugin_names('heads'), help='Embedding head, a module of heads/.')
    parser.add_argument('--embedding_dim', default=defaults['embedding_dim'],
                        type=common.positive_int, help='Size of the embedding.')
    parser.add_argument('--net_input_height', default=defaults['net_input_height'],
                        type=common.positive_int,
                        help='Height of the images the net sees, in pixels.')
    parser.add_argument('--net_input_width', default=defaults['net_input_width'],
                        type=common.positive_int,
                        help='Width of the images the net sees, in pixels.')
    parser.add_argument('--pre_crop_height', default=defaults['pre_crop_height'],
                        type=common.positive_int,
                        help='With --crop_augment: height images are resized to before the '
                             'crop, in pixels.')
    parser.add_argument('--pre_crop_width', default=defaults['pre_crop_width'],
                        type=common.positive_int,
                        help='With --crop_augment: width images are resized to before the '
                             'crop, in pixels.')
    choices = {flag: NET_OPTIONS[option][1] for flag, option in NET_OPTION_FLAGS.items()}
    parser.add_argument('--last_stride', default=defaults.get('last_stride', 2), type=int,
                        choices=choices['last_stride'],
                        help='ResNets: stride of the unit leading into the last block; 1 keeps '
                             'twice the resolution (16x8 at 256x128), as the strong baseline.')
    parser.add_argument('--pooling', default=defaults.get('pooling', 'avg'),
                        choices=choices['pooling'],
                        help='Global pooling of the backbone: avg (the 2017 nets), max, or gem '
                             '(generalised mean, learnable p from 3).')
    parser.add_argument('--resnet_layout', default=defaults.get('resnet_layout', 'slim'),
                        choices=choices['resnet_layout'],
                        help="ResNets: slim (stride in a block's last unit, slim's checkpoints) "
                             "or keras (keras.applications': stride in the first unit; computes "
                             "what Keras does with its weights, at 11%% more FLOPs).")


def given_flags(argv: list[str]) -> set[str]:
    """The names of the flags present in `argv` (exact names: the parsers allow no prefixes)."""
    return {token[2:].split('=')[0] for token in argv if token.startswith('--')}


def check_crop_size(net_size: tuple[int, int], pre_crop_size: tuple[int, int],
                    flag: str = '--crop_augment') -> None:
    """Raises common.InputError if the pre-crop size is smaller than the net input size.

    Args:
        net_size: (height, width) the net sees.
        pre_crop_size: (height, width) images are resized to before cropping.
        flag: the flag that asks for the crop, named in the message.
    """
    if pre_crop_size[0] < net_size[0] or pre_crop_size[1] < net_size[1]:
        raise common.InputError(f'{flag}: the pre-crop size {pre_crop_size[0]}x'
                                f'{pre_crop_size[1]} is smaller than the net input size '
                                f'{net_size[0]}x{net_size[1]}')


# ----------------------------------------------------------------------------- args.json
def write_args(root: Path, args: argparse.Namespace) -> None:
    """Writes every argument of the run to `root/args.json`: sorted keys, indented."""
    with common.atomic_write(root / ARGS_FILE) as tmp:  # a kill leaves none or a whole one
        tmp.write_text(json.dumps(vars(args), sort_keys=True, indent=2) + '\n')


def read_args(path: Path) -> dict:
    """Reads an args.json file.

    Raises:
        common.InputError: the file is missing, unreadable, not UTF-8, not JSON, or not a JSON
            object.
    """
    try:
        stored = json.loads(common.read_text(path, ARGS_FILE))
    except FileNotFoundError:
        raise common.InputError(f'{path} does not exist') from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise common.InputError(f'cannot read {path}: {str(e) or type(e).__name__}') from None
    if not isinstance(stored, dict):
        raise common.InputError(f'{path} does not hold a JSON object')
    return stored


def stored_value(parser: argparse.ArgumentParser, key: str, value, path: Path):
    """A setting of args.json, checked as the command line checks its flag (type, choices).

    Returns:
        The value, unchanged.

    Raises:
        common.InputError: the value is not one the flag accepts.
    """
    # argparse has no public way to find the action of a destination.
    action = next((a for a in parser._actions if a.dest == key), None)
    if action is None or (value is None and action.default is None):
        return value
    problem = None
    if action.nargs == 0:  # store_true and the like
        problem = None if isinstance(value, bool) else 'true or false'
    elif value is None or isinstance(value, bool | list | dict):
        problem = 'a single value'
    elif action.type is not None:
        try:
            converted = action.type(str(value))
            # What the flag's type makes of the text must be the stored value: the number 8,
            # not the string "8"; 0.2, not "0.2".
            if converted != value or isinstance(value, str) != isinstance(converted, str):
                problem = f'the {type(converted).__name__} {converted!r}'
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            problem = str(e)
    elif not isinstance(value, str):
        problem = 'a string'
    if problem is None and action.choices is not None and value not in action.choices:
        problem = f'one of {", ".join(map(str, action.choices))}'
    if problem:
        raise common.InputError(f'{path}: {key} is {value!r}, expected {problem}')
    return value


def resume_args(args: argparse.Namespace, argv: list[str],
                parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Replaces the settings in `args` by those of the run's args.json, for train.py --resume.

    Args:
        args: the parsed command line; changed in place.
        argv: the command line, to tell the given flags from the defaults.
        parser: the parser of `args`; if given, every stored value is checked as its flag is.

    Returns:
        Notes to log as warnings: given flags that differ from the stored values (which win),
        and stored settings that train.py does not know (ignored).

    Raises:
        common.InputError: there is no args.json in the experiment root, it is unreadable, or
            (with `parser`) a stored value is not one its flag accepts.
    """
    path = Path(args.experiment_root).expanduser() / ARGS_FILE
    if not path.is_file():
        raise common.InputError(f'--resume: there is no {path}; start a new run without '
                                '--resume')
    given = given_flags(argv)
    notes = []
    for key, value in read_args(path).items():
        if key in NEVER_COMPARED:
            continue
        if key not in vars(args):
            notes.append(f'{path} has an unknown setting {key!r}: ignored')
            continue
        if parser is not None:
            value = stored_value(parser, key, value, path)
        if key in given and getattr(args, key) != value:
            notes.append(f'--{key}: using the stored value {value!r}, not the given '
                         f'{getattr(args, key)!r} (edit args.json to change it)')
        setattr(args, key, value)
    return notes


def fill_model_settings(args: argparse.Namespace, stored: dict, path: Path) -> None:
    """Sets each of MODEL_SETTINGS that is None in `args` from `stored` (args.json at `path`).

    Raises:
        common.InputError: a stored value has the wrong type (or is not positive).
    """
    for key, kind in MODEL_SETTINGS.items():
        if getattr(args, key, None) is None and stored.get(key) is not None:
            value = stored[key]
            if not isinstance(value, kind) or isinstance(value, bool) or (
                    kind is int and value <= 0):
                raise common.InputError(f'{path}: {key} is {value!r}, expected a '
                                        f'{"positive integer" if kind is int else "string"}')
            setattr(args, key, value)


def model_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of model.build_model beyond name, head, size and precision:
    `num_classes` and the net options, the 2017 values where `args` has none (an args.json
    from before the flags)."""
    options = {'num_classes': getattr(args, 'num_classes', None)}
    for flag, option in NET_OPTION_FLAGS.items():
        value = getattr(args, flag, None)
        options[option] = NET_OPTIONS[option][1][0] if value is None else value
    return options


# ----------------------------------------------------------------------------- the lock
# flock, not a file created with O_EXCL: the kernel releases it when its process dies, even
# by SIGKILL, so a lock that a killed run left behind is never mistaken for a live run.
def check_empty(root: Path) -> None:
    """Refuses a fresh run in a root that holds anything but a lock file."""
    if root.exists() and (not root.is_dir() or any(
            p.name != LOCK_FILE for p in root.iterdir())):
        raise common.InputError(f'--experiment_root {root} is not empty; pass --resume to '
                                'continue that run, or choose a new folder')


def _try_lock(f, root: Path) -> None:
    """Locks the open lock file `f`, or raises InputError naming the run that holds it."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or 'a process that is starting'
        raise common.InputError(f'{root} is in use by another train.py ({holder}); wait for '
                                'it to end or stop it first') from None


def check_unlocked(root: Path) -> None:
    """Raises InputError if a live train.py holds `root`; creates nothing.

    Raises:
        common.InputError: the lock is held; the message names the holder's PID and host.
    """
    try:
        f = open(root / LOCK_FILE)
    except OSError:
        return  # no lock file (or no root): no run
    with f:
        _try_lock(f, root)  # closing the file releases the lock again


@contextlib.contextmanager
def locked(root: Path) -> Iterator[str | None]:
    """Holds the lock of the existing folder `root` while the block runs.

    The lock file holds `pid <PID> on <host>` while locked and is emptied on release, so
    finding it non-empty when taking it means that its holder was killed.

    Yields:
        None, or a warning to log if the lock was taken over from a killed run.

    Raises:
        common.InputError: a live run holds the lock (named by PID and host), or the lock file
            cannot be written.
    """
    try:
        f = open(root / LOCK_FILE, 'a+')
    except OSError as e:
        raise common.InputError(f'cannot write {root / LOCK_FILE}: {e.strerror or e}') from None
    with f:
        _try_lock(f, root)
        f.seek(0)
        previous = f.read().strip()
        f.seek(0)
        f.truncate()
        f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
        f.flush()
        try:
            yield (f'took over {root / LOCK_FILE} from a run that ended without releasing it '
                   f'({previous}, killed or crashed)' if previous else None)
        finally:
            f.truncate(0)


# ----------------------------------------------------------------------------- checkpoints
def step_of(name: str) -> int:
    """The step number a checkpoint name ends in (`checkpoint-25000`: 25000), else -1."""
    match = re.search(r'(\d+)$', name)
    return int(match[1]) if match else -1


def checkpoints_in(root: Path) -> list[str]:
    """Checkpoint names (e.g. `checkpoint-25000`) in `root`, in order of their step number."""
    names = [p.name[:-len('.index')] for p in root.glob('*.index')]
    return sorted(names, key=lambda name: (step_of(name), name))


def find_checkpoint(root: Path, name: str | None) -> Path | None:
    """The checkpoint named by embed.py --checkpoint (relative to `root` unless absolute).

    Returns:
        Its path, or None for the latest (see latest_checkpoint), once `root` is known to have
        one.

    Raises:
        common.InputError: `name` does not exist (the available ones are listed), or `root`
            has no checkpoint at all.
    """
    available = checkpoints_in(root)
    if name is not None:
        checkpoint = root / name.removesuffix('.index')
        if not Path(f'{checkpoint}.index').is_file() and not checkpoint.is_file():
            raise common.InputError(f'checkpoint {checkpoint} does not exist; {root} has '
                                    f'{", ".join(available) if available else "none"}')
        return checkpoint
    if not available:
        raise common.InputError(f'no checkpoint in {root} (no checkpoint-<step>.index files)')
    return None


def latest_checkpoint(root: Path) -> Path:
    """The latest checkpoint in `root`, which has at least one."""
    import tensorflow as tf
    from google.protobuf import text_format
    # The `checkpoint` state file may name paths of the machine that trained, or be damaged;
    # then take the last step.
    try:
        latest = tf.train.latest_checkpoint(str(root))
    except (ValueError, text_format.ParseError, tf.errors.OpError):  # not UTF-8, not a state
        latest = None
    return Path(latest or root / checkpoints_in(root)[-1])


def is_tf1_checkpoint(checkpoint: Path) -> bool:
    """True for a checkpoint of the 2017 TensorFlow 1 code, False for a TF2 object checkpoint.

    Raises:
        common.InputError: the checkpoint cannot be read.
    """
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(str(checkpoint))
    except (tf.errors.OpError, ValueError) as e:
        raise common.InputError(f'cannot read checkpoint {checkpoint}: {e}') from None
    return not reader.has_tensor('_CHECKPOINTABLE_OBJECT_GRAPH')


def restore_model(model, checkpoint: Path, embedding_dim: int, tf1: bool,
                  log: logging.Logger) -> None:
    """Loads only the model's weights from a checkpoint, for embedding.

    Args:
        model: from model.build_model.
        checkpoint: a TF2 object checkpoint of train.py, or (`tf1`) a 2017 TF1 checkpoint,
            whose Adam slots and global_step are skipped.
        embedding_dim: named in the error message.
        tf1: from is_tf1_checkpoint.
        log: where the TF1 loader reports.

    Raises:
        common.InputError: the checkpoint does not hold every weight of the model.
    """
    if tf1:
        missing = load_tf1_checkpoint(model, str(checkpoint), log)['missing']
        if missing:  # fine for training from ImageNet weights, not for embedding
            raise common.InputError(f'checkpoint {checkpoint} lacks {len(missing)} variables of '
                                    f'{model.name}, e.g. {missing[0]}')
        return
    import tensorflow as tf
    try:
        status = tf.train.Checkpoint(model=model).restore(str(checkpoint)).expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise common.InputError(f'checkpoint {checkpoint} does not hold the weights of '
                                f'{model.name} (embedding_dim {embedding_dim}): '
                                f'{str(e).splitlines()[0]}') from None
    except (IndexError, tf.errors.OpError) as e:  # a damaged file: cut short, overwritten
        raise common.InputError(f'cannot read checkpoint {checkpoint}: {first_line(e)}') from None


def first_line(error: Exception) -> str:
    """The first line of an exception's message (TensorFlow's run on with op details)."""
    message = getattr(error, 'message', None) or str(error)
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__


def training_checkpoint(root: Path, model, optimizer, keep: int = 0, log=None, **extra):
    """The step counter and the checkpoint manager of a training run in `root`, after removing
    the partial checkpoint of a run killed while saving (remove_partial_checkpoints).

    Args:
        root: the experiment root, locked by the caller.
        model, optimizer: saved with the step.
        keep: how many of the latest checkpoints the manager keeps, deleting older ones as it
            saves new ones; 0 keeps all (the 2017 code's Saver had max_to_keep=0).
        log: a logger to report removed files to.
        **extra: more objects to save by name (the center loss's `centres`).

    Returns:
        (step, manager): `step` a tf.Variable (int64, iterations done) saved with the model
        and the optimizer; `manager` saves `checkpoint-<step>` files.
    """
    import tensorflow as tf
    removed = remove_partial_checkpoints(root)
    if removed and log:
        log.warning('removed %s: the partial checkpoint of a run killed while saving',
                    ', '.join(removed))
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(step=step, model=model, optimizer=optimizer, **extra)
    # The manager writes the `checkpoint` state file only after the data files are complete,
    # and deletes old checkpoints only after that, so a crash while saving leaves the previous
    # latest checkpoint in place and readable. The state file lists the kept checkpoints, so
    # a resumed run goes on pruning those of the runs before it.
    manager = tf.train.CheckpointManager(checkpoint, str(root), max_to_keep=keep or None,
                                         checkpoint_name=CHECKPOINT_NAME)
    return step, manager


def remove_partial_checkpoints(root: Path) -> list[str]:
    """Deletes what a run killed while saving a checkpoint left in `root`, to be called with
    the lock held: TensorFlow's shard folders `checkpoint-<step>_temp` (a stale file in one
    would outlive the next save of that step) and temporary copies of the state file.

    Returns:
        The names removed.
    """
    partial = [*root.glob(f'{CHECKPOINT_NAME}-*_temp'), *root.glob(f'{CHECKPOINT_NAME}.tmp*')]
    for path in partial:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return sorted(path.name for path in partial)


def save_checkpoint(manager, done: int, flush=None) -> None:
    """Saves `checkpoint-<done>` with the manager of training_checkpoint.

    Args:
        flush: called first, if given: writes the logs that belong with the checkpoint (a
            failure there is one to save as well).

    Raises:
        common.InputError: the checkpoint cannot be written (a full disk, a file size limit):
            its partial files are removed and the latest checkpoint stays the previous one.
    """
    import tensorflow as tf
    previous = manager.latest_checkpoint
    try:
        if flush is not None:
            flush()
        manager.save(checkpoint_number=done)
    except (tf.errors.OpError, OSError) as e:
        prefix = Path(manager.directory) / f'{CHECKPOINT_NAME}-{done}'
        for partial in prefix.parent.glob(f'{prefix.name}[._]*'):
            if partial.is_dir():  # TensorFlow's temporary folder of the shards
                shutil.rmtree(partial)
            else:
                partial.unlink(missing_ok=True)
        message = getattr(e, 'message', None) or getattr(e, 'strerror', None) or str(e)
        raise common.InputError(f'cannot save {prefix}: {message.strip().splitlines()[0]}; the '
                                f'latest checkpoint is still {previous}') from None


def restore_training(manager, description: str, root: Path | None = None) -> str | None:
    """Restores model, optimizer and step from the latest checkpoint, if any.

    Args:
        manager: from training_checkpoint.
        description: the model, named in the error message (e.g. `resnet_v1_50 + fc1024`).
        root: the folder of the checkpoint; default: the manager's (a multiworker process
            that is not the chief saves elsewhere but restores from the experiment root).

    Returns:
        The restored checkpoint's path, or None if the root has no checkpoint.

    Raises:
        common.InputError: the checkpoint does not fit the model or the optimizer.
    """
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(str(root)) if root else manager.latest_checkpoint
    if latest:
        try:
            manager.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, IndexError, tf.errors.OpError) as e:
            raise common.InputError(f'cannot restore {latest} into {description}: '
                                    f'{first_line(e)}') from None
    return latest
