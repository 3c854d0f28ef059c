"""Helpers that every script shares: errors, argument types, datasets, embeddings,
logging and stop signals, images.

TensorFlow is imported only inside the functions that need it, so that evaluate.py (NumPy
only) starts in a fraction of a second instead of paying TensorFlow's ~3.5 s import.
"""
import argparse
import contextlib
import csv
import io
import logging
import os
import signal
import sys
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import NoReturn

import numpy as np


# ----------------------------------------------------------------------------- errors
class InputError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""


def run(main: Callable[[], object]) -> NoReturn:
    """Runs a script's main(), turning InputError into a one-line message and exit code 2."""
    try:
        code = main()
    except InputError as e:
        # One line whatever the message quotes: a file name may hold a line break.
        print(printable(f'{Path(sys.argv[0]).name}: error: {e}'), file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def printable(text: str) -> str:
    """`text` with line breaks, tabs, terminal escape codes and other characters that do not print
    written as Python escapes (`\\n`, `\\x1b`, `\\u202e`): a name from the data can neither
    split a message into lines that look like others nor move the terminal's cursor."""
    if text.isprintable():
        return text
    return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def read_text(path: str | os.PathLike, what: str) -> str:
    """The text of a UTF-8 file, without the byte-order mark that some editors write.

    Raises:
        FileNotFoundError: the file does not exist (the caller words that case).
        InputError: the file is unreadable, or not UTF-8: the message names the line.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise InputError(f'cannot read {what} {path}: {e.strerror or e}') from None
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b'\n') + 1
        raise InputError(f'{path}:{line}: {what} is not UTF-8 text (byte '
                         f'{data[e.start]:#04x} at offset {e.start}); save it as UTF-8') from None


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


def float_in(low: float, high: float = float('inf'), high_included: bool = True
             ) -> Callable[[str], float]:
    """argparse type factory: a finite float in [low, high] (or [low, high) without
    `high_included`), e.g. a probability, a loss weight >= 0."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{value!r} is not a number') from None
        above = number > high if high_included else number >= high
        if not np.isfinite(number) or number < low or above:
            upper = 'inf' if high == float('inf') else f'{high:g}'
            raise argparse.ArgumentTypeError(
                f'{value!r} is not in [{low:g}, {upper}{"]" if high_included else ")"}')
        return number
    return parse


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


# ----------------------------------------------------------------------------- datasets
def load_dataset(csv_file: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 check_files: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Reads a dataset CSV of `pid,relative/path.jpg` lines.

    Args:
        csv_file: the CSV file, UTF-8 (with or without a byte-order mark), any line ends;
            fields may be quoted, spaces around them are dropped, blank lines skipped, repeated
            lines kept (row i is always embedding i). Identities are arbitrary strings.
        image_root: folder the paths are relative to; only needed with `check_files`.
        check_files: raise if any image is missing under `image_root`.

    Returns:
        pids, fids: two string arrays of shape (N,), in file order.

    Raises:
        InputError: the file is missing or unreadable, a line is malformed (named by number),
            the dataset is empty, or (with `check_files`) images are missing.
    """
    try:
        text = read_text(csv_file, 'dataset')
    except FileNotFoundError:
        raise InputError(f'dataset {csv_file} does not exist (data/prepare.py writes the CSVs '
                         'of the public datasets)') from None
    pids, fids = [], []
    try:
        rows = csv.reader(io.StringIO(text, newline=''))
        for row in rows:
            number = rows.line_num  # a quoted field may span lines
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise InputError(f'{csv_file}:{number}: expected "identity,relative/path", '
                                 f'got {",".join(row)!r}')
            if '\0' in row[1]:  # no file system allows it in a name
                raise InputError(f'{csv_file}:{number}: the path holds a NUL character')
            pids.append(row[0].strip())
            fids.append(row[1].strip())
    except csv.Error as e:
        raise InputError(f'cannot read dataset {csv_file}: {e}') from None
    if not fids:
        raise InputError(f'dataset {csv_file} has no lines')
    if check_files:
        root = Path(image_root or '.')
        missing = [fid for fid in fids if not is_file(root / fid)]
        if missing:
            raise InputError(f'{len(missing)} of {len(fids)} images of {csv_file} are missing '
                             f'under {root}, e.g. {", ".join(missing[:3])}')
    return np.array(pids), np.array(fids)


def is_file(path: Path) -> bool:
    """Path.is_file, but False rather than an exception for a name the system refuses (too long)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- embeddings
def load_embeddings(h5_file: str | os.PathLike) -> np.ndarray:
    """Reads dataset `emb` (or the 2017 name `embs`) of an HDF5 file as an (N, D) array.

    Raises:
        InputError: missing or unreadable file, no such dataset, not 2-D, NaN or inf values.
    """
    chunks = list(embedding_chunks(h5_file, rows=None))
    return chunks[0][1]


def embedding_chunks(h5_file: str | os.PathLike,
                     rows: int | None = 2**16) -> Iterator[tuple[int, np.ndarray]]:
    """Reads the embeddings of an HDF5 file as load_embeddings does, `rows` at a time.

    Only one chunk is in memory at once (`rows` x D float32), for files too large to hold
    whole, or pooled on the fly (tracklets): each chunk is read into the same buffer, which
    the next chunk overwrites. None reads everything as one chunk.

    Yields:
        (first row, (n, D) array) for consecutive chunks; the first always, even of 0 rows.
        With `rows`, the array is valid until the next one is read: copy what you keep.

    Raises:
        InputError: as load_embeddings; NaN or inf name the file's row.
    """
    import h5py
    try:
        with h5py.File(h5_file, 'r') as f:
            dataset = _embedding_dataset(f, h5_file)
            if dataset.ndim != 2 or dataset.shape[1] == 0:
                raise InputError(f'{h5_file}: embeddings have shape {dataset.shape}, expected '
                                 '(N, D)')
            if rows is None:
                yield 0, _checked(dataset[()], h5_file, 0)
                return
            # Slicing would allocate each chunk anew while the caller still holds the last one.
            buffer = np.empty((min(rows, len(dataset)), dataset.shape[1]),
                              np.float64 if dataset.dtype == np.float64 else np.float32)
            for start in range(0, max(1, len(dataset)), rows):
                chunk = buffer[:min(rows, len(dataset) - start)]
                if len(chunk):  # HDF5 converts integers and float16 to the buffer's float32
                    dataset.read_direct(chunk, np.s_[start:start + len(chunk)])
                yield start, _checked(chunk, h5_file, start)
    except (OSError, RuntimeError, KeyError, ValueError) as e:  # h5py's for damaged files
        raise InputError(f'cannot read embeddings {h5_file}: {e}') from None


def _embedding_dataset(f, h5_file):
    """The `emb` (or `embs`) dataset of an open HDF5 file, if it holds real numbers."""
    import h5py
    name = 'emb' if 'emb' in f else 'embs' if 'embs' in f else None
    if name is None:
        raise InputError(f'{h5_file} has neither an "emb" nor an "embs" dataset '
                         f'(it has: {", ".join(f.keys()) or "nothing"})')
    dataset = f[name]
    if not isinstance(dataset, h5py.Dataset):
        raise InputError(f'{h5_file}: "{name}" is a group, not a dataset')
    if dataset.dtype.kind not in 'fiu':  # not bool, complex, strings or records
        raise InputError(f'{h5_file}: dataset "{name}" holds {dataset.dtype}, not real numbers')
    return dataset


def _checked(embs: np.ndarray, h5_file, first_row: int) -> np.ndarray:
    """float32 (float64 stays) rows without NaN or inf; rows are numbered from `first_row`."""
    if embs.dtype != np.float64:
        # Integers would wrap around in differences (uint8: 1 - 2 = 255); float16 overflows.
        embs = embs.astype(np.float32, copy=False)
    if embs.size and np.isfinite(embs.min()) and np.isfinite(embs.max()):
        return embs  # min and max propagate NaN: no (N, D) mask for the usual, clean case
    bad = ~np.isfinite(embs).all(axis=1)
    if bad.any():
        raise InputError(f'{h5_file}: {bad.sum()} rows hold NaN or inf, the first is row '
                         f'{first_row + np.flatnonzero(bad)[0]}')
    return embs


def temporary_name(path: str | os.PathLike) -> Path:
    """The temporary file atomic_write writes before renaming it to `path`: `name.tmp-<pid>`,
    unique per process, so that two processes writing the same file never write into one
    temporary (the last rename wins with a complete file)."""
    path = Path(path)
    return path.with_name(f'{path.name}.tmp-{os.getpid()}')


def probe_writable(path: str | os.PathLike) -> None:
    """Fails now, not after an hour of embedding, if `path` cannot be written.

    Raises:
        InputError: `path` is a folder, or a file cannot be created beside it.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f'cannot write {path}: it is a folder')
    probe = temporary_name(path)  # the name the writer uses: no other process's
    try:
        with open(probe, 'wb'):
            pass
        probe.unlink()
    except OSError as e:
        raise InputError(f'cannot write {path}: {e.strerror or e}') from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; when the block ends without error it
    replaces `path`, otherwise it is removed. So an interrupted or failed write never leaves a
    truncated file under the final name, and the previous file stays intact.

    Raises:
        InputError: the file cannot be written (a missing folder, a full or read-only disk).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f'cannot write {path}: {e.strerror or e}') from None
    finally:
        # Not there (the rename happened, or nothing was written), or on a read-only disk,
        # where even a missing file's unlink fails with EROFS, not ENOENT.
        with contextlib.suppress(OSError):
            tmp.unlink()


def save_embeddings(h5_file: str | os.PathLike, emb: np.ndarray, emb_aug: np.ndarray | None = None,
                    augmentation_types: list[str] | None = None) -> None:
    """Writes `emb` (N, D), optionally `emb_aug` (A, N, D) and `augmentation_types` (A,).

    The file is written under a temporary name and renamed, so an interrupted run never
    leaves a truncated file under the final name. `embs` is a soft link to `emb`, the name
    the 2017 code wrote.

    Raises:
        InputError: the file cannot be written (a full disk, a file size limit, a read-only
            folder); a previous file of that name stays as it was.
    """
    import h5py
    # Built in memory, then written with plain file writes: when a write fails (a full disk),
    # the HDF5 library ends the process with a segmentation fault instead of an error
    # (h5py 3, HDF5 1.14). It costs the file's size in memory once more.
    image = io.BytesIO()
    with h5py.File(image, 'w') as f:
        f.create_dataset('emb', data=np.asarray(emb, np.float32))
        f['embs'] = h5py.SoftLink('/emb')
        if emb_aug is not None:
            f.create_dataset('emb_aug', data=np.asarray(emb_aug, np.float32))
            f.create_dataset('augmentation_types', dtype=h5py.string_dtype(),
                             data=np.array(augmentation_types, dtype=object))
    with atomic_write(h5_file) as tmp:
        tmp.write_bytes(image.getbuffer())


# ----------------------------------------------------------------------------- logging
class OneLineFormatter(logging.Formatter):
    """Writes each record's message on one line (see `printable`): the file names and
    identities that messages quote cannot forge log lines. A traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def setup_logging(log_file: str | os.PathLike | None = None, quiet: bool = False) -> logging.Logger:
    """The project's logger: to the console and, if given, appended to `log_file`."""
    log = logging.getLogger('triplet-reid')
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    formatter = OneLineFormatter('%(asctime)s %(levelname)s %(message)s', '%Y-%m-%d %H:%M:%S')
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    return log


def stop_requests(log) -> list:
    """Makes SIGINT / SIGTERM ask a loop to finish its iteration (train.py: save and exit 0).

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


# ----------------------------------------------------------------------------- images
def read_image(path):
    """Decodes a JPEG or PNG file (colour or greyscale, any size) to a uint8 RGB tensor (H, W, 3).

    Works eagerly and inside tf.data / tf.function.
    """
    import tensorflow as tf
    return decode_image(tf.io.read_file(path))


def decode_image(data):
    """Decodes the bytes of a JPEG or PNG file as read_image does: uint8 RGB (H, W, 3).

    export.py's serve_jpeg signature decodes with this, so that a service sees the pixels that
    embed.py sees. Works eagerly and inside tf.data / tf.function.
    """
    import tensorflow as tf
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def resize_image(image, height: int, width: int):
    """Resizes a uint8 RGB image (H, W, 3) to float32 (height, width, 3), values in [0, 255].

    Bilinear with TF2's half-pixel centres, as embed.py resizes for experiments of this
    project, so that training and embedding see the same pixels. (TF1's resize_images, used
    by the 2017 code, sampled without half-pixel centres; embed.py's `legacy_resize` does
    that for 2017 experiment roots.) Works eagerly and inside tf.data / tf.function.
    """
    import tensorflow as tf
    return tf.image.resize(image, (height, width), method='bilinear')
