"""The gallery index folder of search.py: its files, and the nearest-neighbour search over it.

    INDEX/index.json        settings: metric, the embedding's model and input size, where they
                            came from, the index kind (exact or faiss) and its parameters
    INDEX/embeddings.npy    (N, D) float32, the embeddings the index was built from
    INDEX/gallery.csv       `identity,path` of each of those rows (the dataset format)
    INDEX/faiss.index       --index faiss: the faiss index of those rows
    INDEX/additions/NNNNNNNN.npz   one per `index --add` or POST /gallery: embs, pids, fids

An addition is one new file, written under a temporary name and then linked to the next free
number (a hard link fails when the name is taken, so two writers never share one), so adding
never rewrites the base files, and an addition that was acknowledged survives a crash.

Search is exact by default, with the distances and ranking of evaluate.py: a float32 matrix
product (BLAS) over blocks of the gallery screens candidates, keeping every entry that rounding
could put among the k nearest, and the candidates are then ranked by their float64 distances
(loss.cdist's definitions), ties in gallery order, as evaluate.py ranks them. faiss (optional)
replaces the screening by an approximate one (HNSW, or IVF for large galleries); its
candidates are ranked the same way.
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
import loss

INDEX_FILE, EMBS_FILE, ENTRIES_FILE = 'index.json', 'embeddings.npy', 'gallery.csv'
FAISS_FILE, ADDITIONS = 'faiss.index', 'additions'
FORMAT = 1  # of index.json; a reader refuses other versions
INSTALL_HINT = 'pip install -r requirements-search.txt'
# Screening values per matrix product: 16 MiB of float32, 64 queries x 65536 gallery rows. One
# query screens the whole of a million-row gallery in one product (no per-block overhead).
BLOCK_ENTRIES = 2**22
PROBE = 65536  # columns whose k-th smallest value starts a block's screening threshold
EPS32 = 2.0 ** -24  # float32's unit roundoff


# ----------------------------------------------------------------------------- exact search
class Exact:
    """Exact k-nearest screening over float32 embeddings that grow by appending.

    `candidates` returns, per query, a superset of its k nearest entries: the screening values
    are float32 (a matrix product for the euclidean metrics) and carry a rounding error that is
    bounded (Higham's dot product bound), so every entry within twice that bound of the k-th
    smallest value is kept. cityblock has no matrix-product form: it is computed exactly in
    float64 per block.
    """

    def __init__(self, embs: np.ndarray, metric: str, block: int | None = None):
        self.metric, self.block = metric, block
        # The rows themselves, not a copy: a million 128-D rows are 512 MiB.
        self._embs = np.ascontiguousarray(embs, np.float32)
        self._norms = squared_norms(self._embs)
        self._view = (self._embs, self._norms)

    def add(self, embs: np.ndarray) -> None:
        """Appends (n, D) rows; capacity grows by a quarter, so appending is cheap on average."""
        old_embs, old_norms = self._view
        count, new = len(old_embs), len(embs)
        if count + new > len(self._embs):  # a fresh buffer: searches still hold the old one
            capacity = max(count + new, count + count // 4 + 1024)  # amortised, not 2x memory
            grown = np.empty((capacity, embs.shape[1]), np.float32)
            grown[:count] = old_embs
            norms = np.empty(capacity, np.float32)
            norms[:count] = old_norms
            self._embs, self._norms = grown, norms
        self._embs[count:count + new] = embs
        self._norms[count:count + new] = squared_norms(embs)
        # One assignment: a search running now sees the old rows or the new ones, never half.
        self._view = (self._embs[:count + new], self._norms[:count + new])

    @property
    def embs(self) -> np.ndarray:
        return self._view[0]

    def _screen(self, queries: np.ndarray, embs: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """(B, S) values that rank like the distances: |g|^2 - 2 q.g, or cityblock itself."""
        if self.metric == 'cityblock':
            return loss.cdist(queries.astype(np.float64), embs, 'cityblock')
        # -2 q is exact (a power of two); adding the norms in place: one pass, no temporary.
        values = (queries * np.float32(-2)) @ embs.T
        values += norms
        return values

    def _tolerance(self, queries: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """(B,) twice the largest rounding error of a screening value (0: cityblock is exact)."""
        if self.metric == 'cityblock' or not len(norms):
            return np.zeros(len(queries))
        largest = float(np.sqrt(norms.max()))
        query_norms = np.linalg.norm(queries.astype(np.float64), axis=1)
        dim = queries.shape[1]
        # Dot product of length D, the query's own rounding to float32, the norm and the
        # difference: (D + 3) roundings of at most |g|^2 + 2 |q| |g|.
        return 2 * (dim + 3) * EPS32 * (largest ** 2 + 2 * query_norms * largest)

    def candidates(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        """Per query (B, D), the gallery rows that can be among its k nearest (sorted)."""
        embs, norms = self._view
        queries = np.asarray(queries, np.float32)
        k = min(k, len(embs))
        if k == 0:
            return [np.zeros(0, np.int64) for _ in queries]
        tol = self._tolerance(queries, norms)
        block = self.block or max(1024, BLOCK_ENTRIES // len(queries))
        best = np.full((len(queries), k), np.inf)  # the k smallest values so far, per query
        found: list[list] = [[] for _ in queries]
        for start in range(0, len(embs), block):
            values = self._screen(queries, embs[start:start + block], norms[start:start + block])
            limit = best[:, -1].copy()
            fresh = ~np.isfinite(limit)
            if fresh.any() and values.shape[1] >= k:
                # No k values yet: the k-th smallest of this block's first PROBE columns bounds
                # the k-th of the block from above, and costs a 16th of partitioning a million.
                probe = values[fresh, :max(k, PROBE)]
                limit[fresh] = np.partition(probe, k - 1, axis=1)[:, k - 1]
            rows, cols = np.nonzero(values <= (limit + tol)[:, None])
            kept = values[rows, cols]
            bounds = np.searchsorted(rows, np.arange(len(queries) + 1))
            for row in np.flatnonzero(np.diff(bounds)):
                part = slice(bounds[row], bounds[row + 1])
                found[row].append((cols[part] + start, kept[part]))
                merged = np.concatenate([best[row], kept[part]])
                best[row] = np.partition(merged, k - 1)[:k]
        out = []
        for row, parts in enumerate(found):
            cols = np.concatenate([c for c, _ in parts])
            values = np.concatenate([v for _, v in parts])
            out.append(np.sort(cols[values <= best[row].max() + tol[row]]))
        return out


def squared_norms(embs: np.ndarray, rows: int = 65536) -> np.ndarray:
    """(N,) float32 squared norms, summed in float64 a block of rows at a time (bounded memory)."""
    out = np.empty(len(embs), np.float32)
    for start in range(0, len(embs), rows):
        out[start:start + rows] = np.square(embs[start:start + rows], dtype=np.float64).sum(1)
    return out


# ----------------------------------------------------------------------------- faiss
def import_faiss():
    """The faiss module, or an InputError saying what to install."""
    try:
        import faiss
    except ImportError:
        raise common.InputError(f'--index faiss needs faiss-cpu ({INSTALL_HINT})') from None
    return faiss


class Faiss:
    """Approximate screening with a faiss index (L2: the euclidean metrics only)."""

    def __init__(self, index, params: dict):
        self.index, self.params = index, params
        self.lock = threading.Lock()  # faiss's add is not safe alongside searches

    def add(self, embs: np.ndarray) -> None:
        with self.lock:
            self.index.add(np.ascontiguousarray(embs, np.float32))

    def candidates(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        with self.lock:
            _, ids = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return [np.sort(row[row >= 0]) for row in ids]


def build_faiss(embs: np.ndarray, metric: str, k: int = 10, target: float = 0.995,
                tuning: int = 200, hnsw_max: int = 200_000, seed: int = 0) -> Faiss:
    """A faiss index of `embs` (N, D): HNSW up to `hnsw_max` rows, IVF-Flat beyond (HNSW's
    build time grows faster). Its search parameter (efSearch, nprobe) is the smallest that
    reaches recall@k `target` against exact search on `tuning` gallery rows as queries.

    Raises:
        InputError: faiss is not installed, or the metric is not euclidean.
    """
    if metric not in ('euclidean', 'sqeuclidean'):
        raise common.InputError(f'--index faiss ranks by L2 distance: metric {metric} needs '
                                '--index exact')
    faiss = import_faiss()
    embs = np.ascontiguousarray(embs, np.float32)
    count, dim = embs.shape
    rng = np.random.default_rng(seed)
    if count <= hnsw_max:
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efConstruction = 80
        params, knob = {'type': 'HNSW', 'M': 32, 'efConstruction': 80}, 'efSearch'
    else:
        # About 4 sqrt(N) lists (faiss's guideline: 4 to 16 sqrt(N)): short lists, so that a
        # query scans few rows. k-means on 32 rows per list and 10 rounds keeps the build
        # under a minute for a million rows on 2 cores.
        nlist = int(2 ** np.clip(round(np.log2(4 * np.sqrt(count))), 4, 16))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.cp.max_points_per_centroid, index.cp.niter = 32, 10
        index.train(embs[rng.choice(count, min(count, 32 * nlist), replace=False)])
        params, knob = {'type': 'IVFFlat', 'nlist': nlist}, 'nprobe'
    index.add(embs)
    queries, truth, k = tuning_queries(embs, min(count, tuning), min(k, count), rng)
    value, recall = 8, 0.0
    while True:
        set_search_parameter(index, params['type'], value)
        _, ids = index.search(queries, k)
        recall = np.mean([len(t & set(row.tolist())) / k for t, row in zip(truth, ids,
                                                                            strict=True)])
        limit = params.get('nlist', 4096)
        if recall >= target or value >= limit:
            break
        value = min(value + max(1, value // 2), limit)  # steps of 1.5x: 8, 12, 18, 27, ...
    params.update({knob: value, 'tuned_recall_at_k': float(recall), 'tuned_k': k,
                   'tuning_queries': len(queries)})
    return Faiss(index, params)


def tuning_queries(embs: np.ndarray, count: int, k: int, rng) -> tuple[np.ndarray, list, int]:
    """Queries like real ones for tuning: `count` gallery rows, each moved by about the
    distance to its nearest neighbour (a query is a new image, never a gallery row itself),
    with the sets of their exact k nearest rows."""
    exact = Exact(embs, 'sqeuclidean')
    rows = embs[rng.choice(len(embs), count, replace=False)]
    nearest = [np.sort(distances(row, embs[found], 'sqeuclidean'))[1:2]
               for row, found in zip(rows, exact.candidates(rows, 2), strict=True)]
    step = np.sqrt(np.median(np.concatenate(nearest))) if len(embs) > 1 else 0.0
    queries = rows + rng.normal(size=rows.shape).astype(np.float32) * step / np.sqrt(
        embs.shape[1])
    truth = []
    for query, found in zip(queries, exact.candidates(queries, k), strict=True):
        order = np.argsort(distances(query, embs[found], 'sqeuclidean'), kind='stable')
        truth.append(set(found[order[:k]].tolist()))
    return queries.astype(np.float32), truth, k


def set_search_parameter(index, kind: str, value: int) -> None:
    """efSearch of an HNSW index, nprobe of an IVF one."""
    if kind == 'HNSW':
        index.hnsw.efSearch = value
    else:
        index.nprobe = value


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


def distances(query: np.ndarray, embs: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances (n,) of one query (D,) to rows (n, D), as loss.cdist defines them.

    Computed from differences, row by row: an entry's distance does not depend on which other
    rows are ranked with it (a matrix product's rounding can, by its blocking), so that equal
    embeddings get equal distances and keep gallery order.
    """
    diffs = np.asarray(embs, np.float64) - np.asarray(query, np.float64)
    if metric == 'cityblock':
        return np.abs(diffs).sum(1)
    squared = np.square(diffs).sum(1)
    return squared if metric == 'sqeuclidean' else np.sqrt(squared + 1e-12)


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

