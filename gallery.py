"""The gallery index folder of search.py: its files, loading, searching and adding to it.

    INDEX/index.json        settings: metric, the embedding's model and input size, where they
                            came from, the index kind (exact or faiss) and its parameters
    INDEX/embeddings.npy    (N, D) float32, the embeddings the index was built from
    INDEX/gallery.csv       `identity,path` of each of those rows (the dataset format)
    INDEX/faiss.index       --index faiss: the faiss index of those rows
    INDEX/additions/NNNNNNNN.npz   one per `index --add` or POST /gallery: embs, pids, fids

An addition is one new file, written under a temporary name and then linked to the next free
number (a hard link fails when the name is taken, so two writers never share one), so adding
never rewrites the base files, and an addition that was acknowledged survives a crash.

The search itself (exact, or faiss) is nearest.py's.
"""
import contextlib
import csv
import io
import json
import os
import threading
from pathlib import Path

import numpy as np

import common
from nearest import Exact, Faiss, build_faiss, distances, import_faiss, set_search_parameter

INDEX_FILE, EMBS_FILE, ENTRIES_FILE = 'index.json', 'embeddings.npy', 'gallery.csv'
FAISS_FILE, ADDITIONS = 'faiss.index', 'additions'
FORMAT = 1  # of index.json; a reader refuses other versions


# ----------------------------------------------------------------------------- the folder
def write_index(folder: str | os.PathLike, embs: np.ndarray, pids, fids, settings: dict,
                kind: str = 'exact', overwrite: bool = False) -> dict:
    """Writes a gallery index folder atomically (see the module docstring).

    Args:
        embs: (N, D) embeddings. pids, fids: (N,) identities and paths.
        settings: the embedding's settings (metric, model, input size, source).
        kind: 'exact' or 'faiss'.

    Returns:
        The content of index.json.

    Raises:
        InputError: the folder cannot be written, or faiss is missing.
    """
    embs = np.ascontiguousarray(embs, np.float32)
    info = {'format': FORMAT, **settings, 'index': kind, 'count': len(embs),
            'dim': int(embs.shape[1])}
    searcher = build_faiss(embs, settings['metric']) if kind == 'faiss' else None
    if searcher is not None:
        info['faiss'] = searcher.params
    with common.atomic_folder(folder, overwrite) as tmp:
        np.save(tmp / EMBS_FILE, embs)
        write_entries(tmp / ENTRIES_FILE, pids, fids)
        if searcher is not None:
            import_faiss().write_index(searcher.index, str(tmp / FAISS_FILE))
        (tmp / ADDITIONS).mkdir()
        (tmp / INDEX_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + '\n')
    return info


def write_entries(path: Path, pids, fids) -> None:
    with open(path, 'w', newline='', encoding='utf-8') as f:
        csv.writer(f, lineterminator='\n').writerows(zip(pids, fids, strict=True))


def read_info(folder: str | os.PathLike) -> dict:
    """index.json of a gallery index folder.

    Raises:
        InputError: not an index folder, or written by another format version.
    """
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise common.InputError(f'{folder} is not a gallery index (no {INDEX_FILE}; '
                                'search.py index writes one)')
    try:
        info = json.loads(common.read_text(path, 'index settings'))
    except json.JSONDecodeError as e:
        raise common.InputError(f'{path} is not valid JSON: {e}') from None
    if not isinstance(info, dict) or info.get('format') != FORMAT:
        raise common.InputError(f'{path}: not a gallery index of format {FORMAT}')
    return info


class Gallery:
    """A gallery index folder in memory: search it, add to it (thread-safe)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.info = read_info(folder)
        self.metric = self.info['metric']
        try:
            embs = np.load(self.folder / EMBS_FILE, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise common.InputError(f'cannot read {self.folder / EMBS_FILE}: {e}') from None
        pids, fids = common.load_dataset(self.folder / ENTRIES_FILE)
        if len(pids) != len(embs) or embs.ndim != 2:
            raise common.InputError(f'{self.folder}: {len(pids)} entries for embeddings of '
                                    f'shape {embs.shape}: the index is damaged')
        self.pids, self.fids = pids.tolist(), fids.tolist()
        if self.info['index'] == 'faiss':
            faiss = import_faiss()
            index = faiss.read_index(str(self.folder / FAISS_FILE))
            set_search_parameter(index, self.info['faiss']['type'],
                                 self.info['faiss'].get('efSearch',
                                                        self.info['faiss'].get('nprobe')))
            self.searcher = Faiss(index, self.info['faiss'])
            self.exact = Exact(embs, self.metric)  # the float64 ranking reads the rows
        else:
            self.searcher = self.exact = Exact(embs, self.metric)
        self.lock = threading.Lock()  # one writer at a time
        self.additions = 0
        for path in sorted((self.folder / ADDITIONS).glob('*.npz')):
            embs, pids, fids = read_addition(path, self.dim)
            self._extend(embs, pids, fids)
            self.additions += 1

    @property
    def dim(self) -> int:
        return self.exact.embs.shape[1]

    def __len__(self) -> int:
        return len(self.exact.embs)

    def _extend(self, embs: np.ndarray, pids: list, fids: list) -> None:
        # In this order: a search running meanwhile finds only rows whose identity, path and
        # embedding are all there.
        self.pids += list(pids)
        self.fids += list(fids)
        self.exact.add(embs)
        if self.searcher is not self.exact:
            self.searcher.add(embs)

    def add(self, embs: np.ndarray, pids: list[str], fids: list[str]) -> Path:
        """Persists (n, D) new entries as one addition file, then makes them searchable.

        Returns:
            The addition's file.
        """
        embs = np.asarray(embs, np.float32)
        if embs.ndim != 2 or embs.shape[1] != self.dim:
            raise common.InputError(f'new embeddings have shape {embs.shape}; the index holds '
                                    f'{self.dim}-D ones')
        if not np.isfinite(embs).all():
            raise common.InputError('new embeddings hold NaN or inf')
        with self.lock:
            path = write_addition(self.folder / ADDITIONS, embs, pids, fids)
            self._extend(embs, pids, fids)
            self.additions += 1
        return path

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Per query (Q, D), its k nearest entries (index, distance), nearest first: float64
        distances as loss.cdist computes them, ties in gallery order."""
        queries = np.asarray(queries, np.float32)
        found = self.searcher.candidates(queries, k)
        embs = self.exact.embs  # taken after: it holds every row the candidates name
        out = []
        for query, rows in zip(queries, found, strict=True):
            dists = distances(query, embs[rows], self.metric)
            order = np.argsort(dists, kind='stable')[:k]  # rows are sorted: ties by index
            out.append([(int(rows[i]), float(dists[i])) for i in order])
        return out


def check_export(index: 'Gallery', signature: dict, export: str) -> None:
    """Refuses an export (its signature.json) that does not embed as the gallery was embedded."""
    if signature.get('embedding_dim') != index.dim:
        raise common.InputError(f'{export} makes {signature.get("embedding_dim")}-D embeddings, '
                                f'but the index {index.folder} holds {index.dim}-D ones')
    for key in ('model_name', 'head_name'):
        if index.info.get(key) not in (None, signature.get(key)):
            raise common.InputError(f'{export} is a {signature.get(key)} model, but the index '
                                    f'{index.folder} was built from {index.info[key]} '
                                    'embeddings: queries must be embedded the same way')


def write_addition(folder: Path, embs: np.ndarray, pids, fids) -> Path:
    """Writes one addition file under the next free number (see the module docstring)."""
    image = io.BytesIO()
    np.savez(image, embs=embs, pids=np.array(pids, str), fids=np.array(fids, str))
    folder.mkdir(exist_ok=True)
    tmp = folder / f'new.tmp-{os.getpid()}-{threading.get_ident()}'
    try:
        with open(tmp, 'wb') as f:
            f.write(image.getbuffer())
            f.flush()
            os.fsync(f.fileno())  # on disk before the answer, not only in the page cache
        taken = sorted(folder.glob('*.npz'))
        number = int(taken[-1].stem) + 1 if taken and taken[-1].stem.isdigit() else 0
        while True:
            path = folder / f'{number:08d}.npz'
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                number += 1
    except OSError as e:
        raise common.InputError(f'cannot write an addition into {folder}: '
                                f'{e.strerror or e}') from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def read_addition(path: Path, dim: int) -> tuple[np.ndarray, list, list]:
    """embs (n, D), pids and fids of one addition file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            embs, pids, fids = data['embs'], data['pids'].tolist(), data['fids'].tolist()
    except (OSError, ValueError, KeyError) as e:
        raise common.InputError(f'cannot read addition {path}: {e}') from None
    if embs.ndim != 2 or embs.shape[1] != dim or not len(pids) == len(fids) == len(embs):
        raise common.InputError(f'addition {path} does not fit the index ({dim}-D)')
    return embs, pids, fids

