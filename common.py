"""Helpers that every script shares: errors, argument types, datasets, embeddings, plug-ins.

TensorFlow is imported only inside the functions that need it, so that evaluate.py (NumPy
only) starts in a fraction of a second instead of paying TensorFlow's ~3.5 s import.
"""
import argparse
import csv
import logging
import os
import sys
from importlib import import_module
from pathlib import Path
from typing import NoReturn
from collections.abc import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- errors
class InputError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""


def run(main: Callable[[], object]) -> NoReturn:
    """Runs a script's main(), turning InputError into a one-line message and exit code 2."""
    try:
        code = main()
    except InputError as e:
        print(f'{Path(sys.argv[0]).name}: error: {e}', file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


# ----------------------------------------------------------------------------- argument types
def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type factory: an integer >= minimum."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{value!r} is not an integer') from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f'{value!r} is below {minimum}')
        return number
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def positive_float(value: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{value!r} is not a number') from None
    if not np.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f'{value!r} is not a positive number')
    return number


def float_or_string(choices: tuple[str, ...]) -> Callable[[str], float | str]:
    """argparse type factory: a float, or one of the given words (e.g. the margin `soft`)."""
    def parse(value: str) -> float | str:
        if value in choices:
            return value
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f'{value!r} is neither a number nor one of {", ".join(choices)}') from None
        if not np.isfinite(number) or number < 0:
            raise argparse.ArgumentTypeError(f'{value!r} must be a number >= 0')
        return number
    return parse


# ----------------------------------------------------------------------------- plug-ins
def plugin_names(folder: str) -> list[str]:
    """The modules in `folder` (nets, heads, excluders): the valid --choices, found by scanning."""
    return sorted(p.stem for p in (ROOT / folder).glob('*.py') if not p.stem.startswith('_'))


def import_plugin(folder: str, name: str):
    """Imports `folder/name.py` by name; an unknown name is an InputError listing the choices."""
    if name not in plugin_names(folder):
        raise InputError(f'unknown {folder} module {name!r}; '
                         f'choose from {", ".join(plugin_names(folder))}')
    return import_module(f'{folder}.{name}')


# ----------------------------------------------------------------------------- datasets
def load_dataset(csv_file: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 check_files: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Reads a dataset CSV of `pid,relative/path.jpg` lines.

    Args:
        csv_file: the CSV file. Identities are arbitrary strings; blank lines are skipped.
        image_root: folder the paths are relative to; only needed with `check_files`.
        check_files: raise if any image is missing under `image_root`.

    Returns:
        pids, fids: two string arrays of shape (N,), in file order.

    Raises:
        InputError: the file is missing or unreadable, a line is malformed (named by number),
            the dataset is empty, or (with `check_files`) images are missing.
    """
    pids, fids = [], []
    try:
        with open(csv_file, newline='', encoding='utf-8') as f:
            for number, row in enumerate(csv.reader(f), start=1):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise InputError(f'{csv_file}:{number}: expected "identity,relative/path", '
                                     f'got {",".join(row)!r}')
                pids.append(row[0].strip())
                fids.append(row[1].strip())
    except FileNotFoundError:
        raise InputError(f'dataset {csv_file} does not exist (data/prepare.py writes the CSVs '
                         'of the public datasets)') from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f'cannot read dataset {csv_file}: {e}') from None
    if not fids:
        raise InputError(f'dataset {csv_file} has no lines')
    if check_files:
        root = Path(image_root or '.')
        missing = [fid for fid in fids if not (root / fid).is_file()]
        if missing:
            raise InputError(f'{len(missing)} of {len(fids)} images of {csv_file} are missing '
                             f'under {root}, e.g. {", ".join(missing[:3])}')
    return np.array(pids), np.array(fids)


# ----------------------------------------------------------------------------- embeddings
def load_embeddings(h5_file: str | os.PathLike) -> np.ndarray:
    """Reads dataset `emb` (or the 2017 name `embs`) of an HDF5 file as an (N, D) array.

    Raises:
        InputError: missing or unreadable file, no such dataset, not 2-D, NaN or inf values.
    """
    import h5py
    try:
        with h5py.File(h5_file, 'r') as f:
            name = 'emb' if 'emb' in f else 'embs' if 'embs' in f else None
            if name is None:
                raise InputError(f'{h5_file} has neither an "emb" nor an "embs" dataset '
                                 f'(it has: {", ".join(f.keys()) or "nothing"})')
            embs = f[name][()]
    except OSError as e:
        raise InputError(f'cannot read embeddings {h5_file}: {e}') from None
    if embs.ndim != 2:
        raise InputError(f'{h5_file}: embeddings have shape {embs.shape}, expected (N, D)')
    bad = ~np.isfinite(embs).all(axis=1)
    if bad.any():
        raise InputError(f'{h5_file}: {bad.sum()} rows hold NaN or inf, the first is row '
                         f'{np.flatnonzero(bad)[0]}')
    return embs


def save_embeddings(h5_file: str | os.PathLike, emb: np.ndarray, emb_aug: np.ndarray | None = None,
                    augmentation_types: list[str] | None = None) -> None:
    """Writes `emb` (N, D), optionally `emb_aug` (A, N, D) and `augmentation_types` (A,).

    The file is written under a temporary name and renamed, so an interrupted run never
    leaves a truncated file under the final name. `embs` is a soft link to `emb`, the name
    the 2017 code wrote.
    """
    import h5py
    h5_file = Path(h5_file)
    tmp = h5_file.with_name(h5_file.name + '.tmp')
    try:
        with h5py.File(tmp, 'w') as f:
            f.create_dataset('emb', data=np.asarray(emb, np.float32))
            f['embs'] = h5py.SoftLink('/emb')
            if emb_aug is not None:
                f.create_dataset('emb_aug', data=np.asarray(emb_aug, np.float32))
                f.create_dataset('augmentation_types', dtype=h5py.string_dtype(),
                                 data=np.array(augmentation_types, dtype=object))
        os.replace(tmp, h5_file)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f'cannot write {h5_file}: {e}') from None


# ----------------------------------------------------------------------------- logging
def setup_logging(log_file: str | os.PathLike | None = None, quiet: bool = False) -> logging.Logger:
    """The project's logger: to the console and, if given, appended to `log_file`."""
    log = logging.getLogger('triplet-reid')
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    formatter = logging.Formatter('%(asctime)s %(levelname)s %(message)s', '%Y-%m-%d %H:%M:%S')
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    return log


# ----------------------------------------------------------------------------- images and models
def read_image(path):
    """Decodes a JPEG or PNG file (colour or greyscale, any size) to a uint8 RGB tensor (H, W, 3).

    Works eagerly and inside tf.data / tf.function.
    """
    import tensorflow as tf
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def resize_image(image, height: int, width: int):
    """Resizes a uint8 RGB image (H, W, 3) to float32 (height, width, 3), values in [0, 255].

    Bilinear with TF2's half-pixel centres, as embed.py resizes for experiments of this
    project, so that training and embedding see the same pixels. (TF1's resize_images, used
    by the 2017 code, sampled without half-pixel centres; embed.py's `legacy_resize` does
    that for 2017 experiment roots.) Works eagerly and inside tf.data / tf.function.
    """
    import tensorflow as tf
    return tf.image.resize(image, (height, width), method='bilinear')


def build_model(model_name: str, head_name: str, embedding_dim: int):
    """The embedding model: nets/<model_name>.py followed by heads/<head_name>.py.

    The model takes float32 RGB images (B, H, W, 3) with values in [0, 255], any H and W
    (the backbone does its own preprocessing), and returns the dict of named endpoints that
    the net and head produce; `endpoints['emb']` is the (B, embedding_dim) embedding.
    """
    import keras
    net = import_plugin('nets', model_name)
    head = import_plugin('heads', head_name)
    images = keras.Input((None, None, 3), name='images')
    endpoints = head.endpoints(net.endpoints(images), embedding_dim)
    return keras.Model(images, endpoints, name=f'{model_name}_{head_name}')


# ----------------------------------------------------------------------------- batch norm
def _define_batch_norm():
    """Defines the BatchNorm layer class; called once, on first use of `common.BatchNorm`."""
    import keras
    import tensorflow as tf

    class BatchNorm(keras.layers.Layer):
        """Batch norm over the last axis with TensorFlow's fused kernel, as slim's batch_norm.

        Keras 3's BatchNormalization computes the moments with separate ops; the fused kernel
        does the forward and the backward pass in one op each, which is what makes our
        ResNet-50 training step faster than plain Keras on CPU (benchmarks/net_speed.py).

        In training mode the output uses the batch's mean and biased variance, and the
        moving averages move towards the batch's mean and *unbiased* variance (what the
        fused kernel returns, and so what slim's fused batch norm stored in its checkpoints):
        moving = decay * moving + (1 - decay) * batch. In inference mode (training False or
        None, or the layer frozen with trainable=False) the moving averages are used.

        Inputs (B, H, W, C) or (B, C) float32; the output has the input's shape. The weights
        are named gamma, beta, moving_mean, moving_variance as in slim's checkpoints.
        """

        def __init__(self, decay: float = 0.997, epsilon: float = 1e-5, scale: bool = True,
                     **kwargs):
            super().__init__(**kwargs)
            self.decay = decay
            self.epsilon = epsilon
            self.scale = scale
            # cuDNN refuses epsilon < 1e-5 and 1e-5 in float32 is just below it; TensorFlow's
            # own wrappers (and so slim) used the same floor. The change is invisible.
            self._kernel_epsilon = max(epsilon, 1.001e-5)

        def build(self, input_shape):
            channels = input_shape[-1]
            if self.scale:
                self.gamma = self.add_weight(shape=(channels,), initializer='ones', name='gamma')
            self.beta = self.add_weight(shape=(channels,), initializer='zeros', name='beta')
            self.moving_mean = self.add_weight(shape=(channels,), initializer='zeros',
                                               trainable=False, name='moving_mean')
            self.moving_variance = self.add_weight(shape=(channels,), initializer='ones',
                                                   trainable=False, name='moving_variance')

        def call(self, inputs, training=None):
            x = tf.convert_to_tensor(inputs)
            flat = x.shape.rank == 2
            if flat:
                x = x[:, None, None, :]  # (B, C) -> (B, 1, 1, C): the kernel wants 4-D
            elif x.shape.rank != 4:
                raise ValueError(f'{self.name}: expected a 2-D or 4-D input, got {x.shape}')
            gamma = self.gamma if self.scale else tf.ones_like(self.beta)
            if training and self.trainable:
                y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                    x=x, scale=gamma, offset=self.beta, mean=tf.constant([]),
                    variance=tf.constant([]), epsilon=self._kernel_epsilon,
                    exponential_avg_factor=1.0, data_format='NHWC', is_training=True)
                momentum = 1.0 - self.decay
                self.moving_mean.assign_sub((self.moving_mean - mean) * momentum)
                self.moving_variance.assign_sub((self.moving_variance - variance) * momentum)
            else:
                y, *_ = tf.raw_ops.FusedBatchNormV3(
                    x=x, scale=gamma, offset=self.beta, mean=self.moving_mean,
                    variance=self.moving_variance, epsilon=self._kernel_epsilon,
                    exponential_avg_factor=1.0, data_format='NHWC', is_training=False)
            return y[:, 0, 0, :] if flat else y

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), 'decay': self.decay, 'epsilon': self.epsilon,
                    'scale': self.scale}

    return BatchNorm


def __getattr__(name: str):
    # `common.BatchNorm` is a Keras layer, but importing Keras here would make evaluate.py
    # (NumPy only) pay TensorFlow's import time; so the class is defined on first access.
    if name == 'BatchNorm':
        globals()['BatchNorm'] = _define_batch_norm()
        return globals()['BatchNorm']
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# ----------------------------------------------------------------------------- TF1 checkpoints
def slim_name(layer, variable) -> str:
    """The TF1/slim checkpoint name of a Keras variable, by a rule on the names we choose.

    Keras 3 forbids '/' in layer names, so our layers use '.' where slim's scopes use '/';
    Keras' variable names map to slim's: kernel -> weights (depthwise_weights for a depthwise
    conv), bias -> biases; batch norm's gamma, beta, moving_mean, moving_variance stay.
    E.g. layer `resnet_v1_50.conv1.BatchNorm`, variable `gamma` ->
    `resnet_v1_50/conv1/BatchNorm/gamma`.
    """
    import keras
    name = variable.name.split('/')[-1]
    if name == 'kernel':
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        name = 'depthwise_weights' if depthwise else 'weights'
    elif name == 'bias':
        name = 'biases'
    return layer.name.replace('.', '/') + '/' + name


def _some(names: list[str], limit: int = 6) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f', ... ({len(names) - limit} more)' if len(names) > limit else '')


def load_tf1_checkpoint(model, path: str | os.PathLike, log: logging.Logger | None = None) -> dict:
    """Loads a TF1 (slim-named) checkpoint into a model by variable name.

    Reads the old single-file "V1" format (e.g. slim's published resnet_v1_50.ckpt) and V2
    (`prefix.index` + `prefix.data-*`; give the prefix, either file, or a folder with a
    `checkpoint` file, such as a 2017 experiment root). Variables the model lacks (ImageNet
    logits, Adam slots, global_step) are ignored; model variables the checkpoint lacks keep
    their initial values (expected for a head on an ImageNet checkpoint). Both are logged.

    Args:
        model: a Keras model whose variables follow `slim_name`.
        path: the checkpoint.
        log: where the summary goes; the project's logger if None.

    Returns:
        dict with lists of slim names: `loaded` (assigned), `missing` (model variables not in
        the checkpoint) and `ignored` (checkpoint variables not in the model).

    Raises:
        InputError: unreadable checkpoint, or one of another architecture: nothing matches, a
            shape differs, or a scope of the model is in the checkpoint only in part (the
            first culprit is named).
    """
    import tensorflow as tf
    log = log or logging.getLogger('triplet-reid')
    path = str(path)
    for suffix in ('.index', '.meta'):
        path = path.removesuffix(suffix)
    if '.data-' in Path(path).name:
        path = path[:path.rindex('.data-')]
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f'cannot read checkpoint {path}: {message}') from None
    shapes = reader.get_variable_to_shape_map()

    variables = {}
    for layer in model.layers:
        for variable in layer.weights:
            variables[slim_name(layer, variable)] = variable
    ignored = sorted(set(shapes) - set(variables))
    missing = sorted(set(variables) - set(shapes))
    loaded = sorted(set(variables) & set(shapes))
    if not loaded:
        hint = (' (a TF2 object checkpoint: use train.py --resume, or embed.py, on its '
                'experiment root)' if any('.ATTRIBUTES' in name for name in shapes) else '')
        raise InputError(f'checkpoint {path} holds none of the variables of model {model.name}'
                         f'{hint}: it has e.g. {_some(sorted(shapes), 3)}; the model expects e.g. '
                         f'{_some(sorted(variables), 3)}')
    # A scope that is in the checkpoint at all must be there in full: a partial match means
    # another architecture (e.g. other block sizes), not a head that was never trained.
    scopes = {name.split('/')[0] for name in shapes}
    partial = [name for name in missing if name.split('/')[0] in scopes]
    if partial:
        raise InputError(f'checkpoint {path} does not fit model {model.name}: it lacks '
                         f'{len(partial)} variables of the model, e.g. {_some(partial, 3)}')
    for name, variable in variables.items():  # model order: the culprit nearest the input
        if name in shapes and tuple(shapes[name]) != tuple(variable.shape):
            raise InputError(f'checkpoint {path} does not fit model {model.name}: {name} has '
                             f'shape {tuple(shapes[name])} there, {tuple(variable.shape)} in '
                             f'the model')
    for name in loaded:
        variables[name].assign(reader.get_tensor(name).astype(variables[name].dtype))

    log.info('loaded %d of the model\'s %d variables from %s', len(loaded), len(variables), path)
    if missing:
        log.info('%d model variables are not in the checkpoint and keep their initial values: '
                 '%s', len(missing), _some(missing))
    if ignored:
        log.info('ignored %d checkpoint variables that the model lacks: %s', len(ignored),
                 _some(ignored))
    return {'loaded': loaded, 'missing': missing, 'ignored': ignored}
