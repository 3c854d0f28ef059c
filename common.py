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
from typing import Callable, NoReturn

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
def positive_int(value: str) -> int:
    """argparse type: an integer > 0."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{value!r} is not an integer') from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f'{value!r} is not a positive integer')
    return number


def nonnegative_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{value!r} is not an integer') from None
    if number < 0:
        raise argparse.ArgumentTypeError(f'{value!r} is negative')
    return number


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
        raise InputError(f'unknown {folder} module {name!r}; choose from {", ".join(plugin_names(folder))}')
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
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f'cannot read dataset {csv_file}: {e}') from None
    if not fids:
        raise InputError(f'dataset {csv_file} has no lines')
    if check_files:
        root = Path(image_root or '.')
        missing = [fid for fid in fids if not (root / fid).is_file()]
        if missing:
            raise InputError(f'{len(missing)} of {len(fids)} images of {csv_file} are missing under '
                             f'{root}, e.g. {", ".join(missing[:3])}')
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
                f.create_dataset('augmentation_types', data=np.array(augmentation_types, dtype=object),
                                 dtype=h5py.string_dtype())
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
