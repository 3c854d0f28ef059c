"""Nearest-neighbour search over a growing set of embeddings: exact (blocked BLAS) or faiss.

Exact search gives evaluate.py's ranking: a float32 matrix product (BLAS) over blocks of the
gallery screens candidates, keeping every entry that rounding could put among the k nearest;
gallery.Gallery then ranks the candidates by their float64 `distances` (loss.cdist's
definitions), ties in gallery order, as evaluate.py ranks them. faiss (optional) replaces the
screening by an approximate one (HNSW, or IVF for large galleries), ranked the same way.
"""
import threading

import numpy as np

import common
import loss

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
    smallest value is kept. cosine screens by the negated cosine similarity. cityblock has no
    matrix-product form: it is computed exactly in float64 per block.
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
        """(B, S) values that rank like the distances: |g|^2 - 2 q.g, -q.g / (|q| |g|) for
        cosine, or cityblock itself."""
        if self.metric == 'cityblock':
            return loss.cdist(queries.astype(np.float64), embs, 'cityblock')
        if self.metric == 'cosine':
            values = loss.unit_rows(queries).astype(np.float32) @ embs.T
            values /= np.maximum(np.sqrt(norms), np.float32(loss.COSINE_FLOOR))
            np.negative(values, out=values)
            return values
        # -2 q is exact (a power of two); adding the norms in place: one pass, no temporary.
        values = (queries * np.float32(-2)) @ embs.T
        values += norms
        return values

    def _tolerance(self, queries: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """(B,) twice the largest rounding error of a screening value (0: cityblock is exact)."""
        if self.metric == 'cityblock' or not len(norms):
            return np.zeros(len(queries))
        if self.metric == 'cosine':  # values in [-1, 1]: the dot product, the unit query's
            # rounding and the division by the norm
            return np.full(len(queries), 2 * (queries.shape[1] + 6) * EPS32)
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


def distances(query: np.ndarray, embs: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances (n,) of one query (D,) to rows (n, D), as loss.cdist defines them.

    Computed from differences, row by row: an entry's distance does not depend on which other
    rows are ranked with it (a matrix product's rounding can, by its blocking), so that equal
    embeddings get equal distances and keep gallery order.
    """
    if metric == 'cosine':  # row by row, as the differences below
        unit = loss.unit_rows(np.asarray(query, np.float64)[None])[0]
        return 1.0 - (loss.unit_rows(np.asarray(embs, np.float64)) * unit).sum(1)
    diffs = np.asarray(embs, np.float64) - np.asarray(query, np.float64)
    if metric == 'cityblock':
        return np.abs(diffs).sum(1)
    squared = np.square(diffs).sum(1)
    return squared if metric == 'sqeuclidean' else np.sqrt(squared + 1e-12)
