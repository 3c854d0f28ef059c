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
import shutil
import signal
import struct
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


def shard(value: str) -> tuple[int, int]:
    """argparse type of embed.py --shard: `I/N` with 0 <= I < N."""
    part, _, parts = value.partition('/')
    if not (part.isdigit() and parts.isdigit()) or not int(part) < int(parts):
        raise argparse.ArgumentTypeError(f'{value!r} is not I/N with 0 <= I < N, e.g. 0/4')
    return int(part), int(parts)


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
        check_images(fids, image_root, csv_file)
    return np.array(pids), np.array(fids)


def check_images(fids, image_root: str | os.PathLike | None, csv_file) -> None:
    """Raises an InputError if any of the images `fids` of `csv_file` is missing."""
    root = Path(image_root or '.')
    missing = [fid for fid in fids if not is_file(root / fid)]
    if missing:
        raise InputError(f'{len(missing)} of {len(fids)} images of {csv_file} are missing '
                         f'under {root}, e.g. {", ".join(missing[:3])}')


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
    if dataset.is_virtual:  # a join of parts: HDF5 would fill a missing one in silently
        check_sources(h5_file, dataset)
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


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside `path` to fill; when the block ends without error it
    takes the place of `path` (renames only), otherwise it is removed. So readers see either
    the old folder or the complete new one, never a half-written one.

    Raises:
        InputError: `path` is a file, or a non-empty folder and not `overwrite`, or its parent
            folder is missing, or the folder cannot be written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f'{path} is a file, not a folder')
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(f'{path} exists and is not empty; add --overwrite to replace it')
    if not path.parent.is_dir():
        raise InputError(f'cannot write {path}: the folder {path.parent} does not exist')
    tmp, old = (path.with_name(f'{path.name}.{kind}-{os.getpid()}') for kind in ('tmp', 'old'))
    try:
        tmp.mkdir()
        yield tmp
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
    except OSError as e:
        raise InputError(f'cannot write {path}: {e.strerror or e}') from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def save_embeddings(h5_file: str | os.PathLike, emb: np.ndarray, emb_aug: np.ndarray | None = None,
                    augmentation_types: list[str] | None = None,
                    attrs: dict | None = None) -> None:
    """Writes `emb` (N, D), optionally `emb_aug` (A, N, D) and `augmentation_types` (A,).

    The file is written under a temporary name and renamed, so an interrupted run never
    leaves a truncated file under the final name. `embs` is a soft link to `emb`, the name
    the 2017 code wrote. `attrs` go to the file's attributes (a part's PART_ATTRS).

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
        f.attrs.update(attrs or {})
        if emb_aug is not None:
            f.create_dataset('emb_aug', data=np.asarray(emb_aug, np.float32))
            f.create_dataset('augmentation_types', dtype=h5py.string_dtype(),
                             data=np.array(augmentation_types, dtype=object))
    with atomic_write(h5_file) as tmp:
        tmp.write_bytes(image.getbuffer())


# ----------------------------------------------------------------------------- parts (shards)
# What embed.py --shard records in each part's HDF5 attributes: its rows [start, stop) of the
# dataset, the dataset's row count and a digest of its lines (parts of another CSV or another
# model do not fit together), and the checkpoint.
PART_ATTRS = ('part_rows', 'part_total', 'part_dataset', 'part_checkpoint')


def dataset_digest(pids: np.ndarray, fids: np.ndarray) -> str:
    """A short digest of a dataset's rows: equal for the same CSV lines, whatever the file."""
    import hashlib
    digest = hashlib.sha256()
    for pid, fid in zip(pids, fids, strict=True):
        digest.update(f'{pid}\0{fid}\n'.encode('utf-8', 'surrogateescape'))
    return digest.hexdigest()[:16]


def part_rows(start_of: int, parts: int, total: int) -> tuple[int, int]:
    """Rows [start, stop) of the part `start_of` (0-based) of `parts` contiguous parts."""
    return start_of * total // parts, (start_of + 1) * total // parts


def read_part_info(h5_file: str | os.PathLike) -> dict | None:
    """The PART_ATTRS of an HDF5 file and its `emb` shape, or None for a file that is no part."""
    import h5py
    try:
        with h5py.File(h5_file, 'r') as f:
            if 'part_rows' not in f.attrs:
                return None
            info = {key: f.attrs[key] for key in PART_ATTRS if key in f.attrs}
            info['shape'] = f['emb'].shape if 'emb' in f else None
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise InputError(f'cannot read embeddings {h5_file}: {e}') from None
    info['part_rows'] = tuple(int(v) for v in info['part_rows'])
    info['part_total'] = int(info['part_total'])
    return info


def check_parts(h5_files: list) -> list[tuple[dict, str]]:
    """The parts in row order, checked to make one whole: same dataset, checkpoint and size,
    no row missing or twice, rows as many as recorded.

    Raises:
        InputError: in one line, naming the culprit.
    """
    infos = []
    for h5_file in h5_files:
        info = read_part_info(h5_file)
        if info is None:
            raise InputError(f'{h5_file} is not a part of embed.py --shard: give it alone')
        infos.append((info, str(h5_file)))
    infos.sort(key=lambda item: item[0]['part_rows'])
    first, first_file = infos[0]
    for info, h5_file in infos:
        for key in ('part_total', 'part_dataset', 'part_checkpoint'):
            if info.get(key) != first.get(key):
                raise InputError(f'{h5_file} does not fit {first_file}: {key} '
                                 f'{info.get(key)!r} vs {first.get(key)!r}')
        start, stop = info['part_rows']
        if info['shape'] is None or info['shape'][0] != stop - start or (
                info['shape'][1:] != first['shape'][1:]):
            raise InputError(f'{h5_file}: emb has shape {info["shape"]}, expected '
                             f'{stop - start} rows like {first["shape"]}')
    expected = 0
    for info, h5_file in infos:
        start, stop = info['part_rows']
        if start > expected:
            raise InputError(f'rows {expected}-{start - 1} of {first["part_total"]} are missing: '
                             f'no part holds them (the next is {h5_file})')
        if start < expected:
            raise InputError(f'{h5_file} overlaps another part: its rows start at {start}, '
                             f'rows up to {expected - 1} are taken')
        expected = stop
    if expected != first['part_total']:
        raise InputError(f'rows {expected}-{first["part_total"] - 1} of {first["part_total"]} '
                         f'are missing: no part holds them (the last is {infos[-1][1]})')
    return infos


def ordered_parts(h5_files: list | str | os.PathLike) -> list[str]:
    """One HDF5 file, or embed.py --shard parts checked to make one whole (check_parts), in
    row order. A lone part that is not the whole dataset is refused.

    Raises:
        InputError: as check_parts.
    """
    files = [h5_files] if isinstance(h5_files, (str, os.PathLike)) else list(h5_files)
    if len(files) == 1:
        info = read_part_info(files[0])
        if info is not None and info['part_rows'] != (0, info['part_total']):
            check_parts(files)  # says which rows are missing
        return [str(files[0])]
    return [h5_file for _, h5_file in check_parts(files)]


def load_embedding_parts(h5_files: list | str | os.PathLike) -> np.ndarray:
    """The embeddings (N, D) of one HDF5 file, or of embed.py --shard parts joined in row order.

    Raises:
        InputError: as load_embeddings and ordered_parts.
    """
    files = ordered_parts(h5_files)
    if len(files) == 1:
        return load_embeddings(files[0])
    return np.concatenate([load_embeddings(h5_file) for h5_file in files])


def join_embedding_parts(h5_files: list, out: str | os.PathLike) -> int:
    """Writes one HDF5 file whose `emb` is an HDF5 virtual dataset over the parts' `emb`: no
    data is copied; the parts must stay beside it (their names are stored relative to `out`'s
    folder). Returns the number of rows.

    Raises:
        InputError: the parts do not make one whole, or `out` cannot be written.
    """
    import h5py
    parts = check_parts(h5_files)
    first = parts[0][0]
    total, shape = first['part_total'], first['shape'][1:]
    layout = h5py.VirtualLayout((total, *shape), np.float32)
    folder = Path(out).resolve().parent
    for info, h5_file in parts:
        start, stop = info['part_rows']
        name = os.path.relpath(Path(h5_file).resolve(), folder)
        layout[start:stop] = h5py.VirtualSource(name, 'emb', shape=(stop - start, *shape))
    probe_writable(out)
    with atomic_write(out) as tmp:
        with h5py.File(tmp, 'w') as f:
            f.create_virtual_dataset('emb', layout, fillvalue=np.nan)
            f['embs'] = h5py.SoftLink('/emb')
            f.attrs.update({key: first[key] for key in PART_ATTRS if key in first})
            f.attrs['part_rows'] = (0, total)
    return total


def check_sources(h5_file: str | os.PathLike, dataset) -> None:
    """Refuses a virtual dataset (a join of parts) one of whose source files is missing."""
    folder = Path(h5_file).parent
    for source in dataset.virtual_sources():
        path = Path(source.file_name)
        path = path if path.is_absolute() else folder / path
        if source.file_name != '.' and not path.is_file():
            raise InputError(f'{h5_file} joins parts, but its part {source.file_name} is missing '
                             f'(looked in {folder})')


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


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) read from the header of a JPEG, PNG, GIF or BMP file; None for anything
    else. A service checks it before decoding: a small file can decode to gigabytes."""
    if data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) >= 24:
        width, height = struct.unpack('>II', data[16:24])
        return height, width
    if data[:6] in (b'GIF87a', b'GIF89a') and len(data) >= 10:
        width, height = struct.unpack('<HH', data[6:10])
        return height, width
    if data[:2] == b'BM' and len(data) >= 26:
        width, height = struct.unpack('<ii', data[18:26])
        return abs(height), abs(width)  # a negative height: rows stored top-down
    if data[:2] != b'\xff\xd8':
        return None
    at = 2
    while at + 9 <= len(data):  # JPEG: walk the segments to the frame header (SOFn)
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack('>HH', data[at + 5:at + 9])
            return height, width
        else:
            at += 2 + struct.unpack('>H', data[at + 2:at + 4])[0]
    return None
