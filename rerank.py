"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in bounded memory, and query expansion.

The published Python `re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)` builds
several dense (N, N) float32 matrices for N = queries + gallery, about 9 GB for Market-1501.
`Reranker` computes the same re-ranked distances from the embeddings while holding only:

- each of the N images' k1 + 1 nearest neighbours (N, k1 + 1), found in blocks of rows;
- the k-reciprocal weights V and their k2-neighbour average as sparse (N, N) matrices: an image
  has at most (k1 + 1)(round(k1 / 2) + 2) non-zero weights, usually a few dozen;
- (B, G) blocks of the result, as evaluate.evaluate asks for them.

The steps follow the published code: the distances of the metric are squared, cast to
float32 and divided by their column's maximum over all N rows (the matrix is symmetric, so a
column of it is a row); neighbours are ranked on those values; the k-reciprocal set of an
image is expanded by the half-k1 (`np.around(k1 / 2)`, which rounds halves to even) reciprocal
set of each member when more than 2/3 of that set lies in the image's own set; weights are
exp(-distance) normalised to sum 1; with k2 > 1 each row is the mean of its k2 nearest rows;
the Jaccard distance is 1 - m / (2 - m) with m the sum of the element-wise minima of two rows;
the result is jaccard * (1 - lambda) + distance * lambda. With `cosine` the squared cosine
distances go in the same way.

Ties: where two distances are equal, the published code's `np.argsort` (not stable) decides
the order of neighbours, and so may this code, differently; with continuous embeddings exact
ties do not occur.
"""
import os

import numpy as np
import scipy.sparse

import common
import loss

BLOCK_BYTES = 2**27  # 128 MiB: the size of one (rows, N) float64 block of distances


def available_memory() -> int:
    """Bytes of memory free for this process (MemAvailable of /proc/meminfo where there is one)."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def needed_memory(n: int, k1: int, k2: int, dim: int) -> int:
    """An upper bound on the bytes `Reranker` holds for n images: worst-case sparse sizes."""
    per_row = (k1 + 1) * (round(k1 / 2) + 2)  # the most non-zero weights a row of V can have
    sparse = n * per_row * (1 + min(k2, per_row)) * 8  # V and its k2-average, value + index
    return int(sparse * 1.5 + n * (k1 + 1) * 16 + n * dim * 8 + 4 * BLOCK_BYTES)


def pair_distances(embs: np.ndarray, rows: np.ndarray, cols: np.ndarray, metric: str) -> np.ndarray:
    """The distances (P,) between embs[rows[p]] and embs[cols[p]], as loss.cdist defines them."""
    out = np.empty(len(rows))
    step = max(1, BLOCK_BYTES // 8 // max(1, embs.shape[1]))
    units = loss.unit_rows(embs.astype(np.float64)) if metric == 'cosine' else None
    for start in range(0, len(rows), step):
        part = slice(start, start + step)
        if metric == 'cosine':
            out[part] = 1.0 - np.einsum('ij,ij->i', units[rows[part]], units[cols[part]])
            continue
        diff = embs[rows[part]].astype(np.float64) - embs[cols[part]]
        if metric == 'cityblock':
            out[part] = np.abs(diff).sum(1)
        else:
            out[part] = np.einsum('ij,ij->i', diff, diff)
            if metric == 'euclidean':
                out[part] = np.sqrt(out[part] + 1e-12)
    return out


def nearest(embs: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest images of each image (itself included) and the column maxima.

    Args:
        embs: (N, D) embeddings, queries first.
        metric: one of loss.METRICS.
        k: neighbours per image, at most N.

    Returns:
        ranks: (N, k) int32 indices, nearest first, ranked on the normalised squared distances;
        col_max: (N,) float32, the largest squared distance in each column (= row).
    """
    n = len(embs)
    ranks, col_max = np.empty((n, k), np.int32), np.empty(n, np.float32)
    rows = max(1, BLOCK_BYTES // 8 // n)
    for start in range(0, n, rows):
        block = slice(start, min(n, start + rows))
        squared = np.square(loss.cdist(embs[block], embs, metric)).astype(np.float32)
        col_max[block] = squared.max(1)
        squared /= col_max[block, None]
        part = np.argpartition(squared, k - 1, axis=1)[:, :k] if k < n else np.tile(
            np.arange(n), (len(squared), 1))
        order = np.argsort(np.take_along_axis(squared, part, 1), axis=1)
        ranks[block] = np.take_along_axis(part, order, 1)
    return ranks, col_max


def reciprocal(ranks: np.ndarray, k: int) -> np.ndarray:
    """(N, k + 1) k-reciprocal neighbours: of i's first k + 1, those with i in theirs; -1 pads."""
    forward = ranks[:, :k + 1]
    out = np.full_like(forward, -1)
    rows = max(1, 2**22 // (k + 1) ** 2)
    for start in range(0, len(forward), rows):
        own = np.arange(start, min(len(forward), start + rows))
        back = forward[forward[own]]  # (b, k + 1, k + 1)
        out[own] = np.where((back == own[:, None, None]).any(-1), forward[own], -1)
    return out


def expanded_sets(ranks: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """The expanded k-reciprocal set of every image as sparse (row, column) pairs, sorted."""
    half = int(np.around(k1 / 2))
    sets, half_sets = reciprocal(ranks, k1), reciprocal(ranks, half)
    all_rows, all_cols = [], []
    rows = max(1, 2**22 // ((k1 + 1) ** 2 * (half + 1)))
    for start in range(0, len(sets), rows):
        own = sets[start:start + rows]  # (b, k1 + 1)
        candidates = half_sets[np.maximum(own, 0)]  # (b, k1 + 1, half + 1)
        size = (candidates >= 0).sum(-1)
        inside = ((candidates[..., None] == own[:, None, None, :]).any(-1)
                  & (candidates >= 0)).sum(-1)
        accept = (inside > 2. / 3 * size) & (own >= 0)
        members = np.concatenate(
            [own, np.where(accept[..., None], candidates, -1).reshape(len(own), -1)], axis=1)
        members.sort(axis=1)
        new = members >= 0
        new[:, 1:] &= members[:, 1:] != members[:, :-1]  # np.unique per row
        row, col = np.nonzero(new)
        all_rows.append(row + start)
        all_cols.append(members[row, col])
    return np.concatenate(all_rows), np.concatenate(all_cols)


class Reranker:
    """Re-ranked query-by-gallery distances, one block of queries at a time.

    Args:
        query_embs: (Q, D) embeddings.
        gallery_embs: (G, D) embeddings.
        metric: one of loss.METRICS; these distances go in, as q_g_dist, q_q_dist, g_g_dist.
        k1, k2, lambda_value: as the paper and the published code (20, 6, 0.3).
        keep: (G,) bool, the gallery entries that take part; the others get distance inf.

    Raises:
        common.InputError: too few images for k1, or more memory needed than is available.

    Calling it with a slice of queries returns their (B, G) float64 re-ranked distances.
    """

    def __init__(self, query_embs: np.ndarray, gallery_embs: np.ndarray, metric: str,
                 k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                 keep: np.ndarray | None = None):
        self.keep = np.ones(len(gallery_embs), bool) if keep is None else keep
        embs = np.concatenate([query_embs, gallery_embs[self.keep]]).astype(np.float32)
        n, self.queries, self.gallery_size = len(embs), len(query_embs), len(gallery_embs)
        if n < k1 + 1:
            raise common.InputError(f're-ranking with --k1 {k1} needs more than {k1} images '
                                    f'(queries and gallery), there are {n}')
        needed, free = needed_memory(n, k1, k2, embs.shape[1]), available_memory()
        if needed > free:
            raise common.InputError(f're-ranking {n} images needs up to {needed / 2**30:.1f} GiB '
                                    f'of memory, {free / 2**30:.1f} GiB are available')
        self.embs, self.metric, self.lambda_value = embs, metric, lambda_value

        ranks, self.col_max = nearest(embs, metric, k1 + 1)
        rows, cols = expanded_sets(ranks, k1)
        # The weights, in float32 as the published code computes them.
        dists = (np.square(pair_distances(embs, rows, cols, metric)).astype(np.float32)
                 / self.col_max[rows])
        weights = np.exp(-dists)
        sums = np.bincount(rows, weights, minlength=n).astype(np.float32)
        v = scipy.sparse.csr_matrix((weights / sums[rows], (rows, cols)), shape=(n, n))
        if k2 != 1:  # local query expansion: the mean of the rows of the k2 nearest
            nearest_k2 = scipy.sparse.csr_matrix(
                (np.ones(n * k2, np.float32), ranks[:, :k2].ravel(), np.arange(0, n * k2 + 1, k2)),
                shape=(n, n))
            v = (nearest_k2 @ v).tocsr()
            v.data /= np.float32(k2)
        self.v_query = v[:self.queries]
        self.v_gallery = v[self.queries:].tocsc()  # (G', N): who shares column k with a query

    def __call__(self, batch: slice) -> np.ndarray:
        queries = np.arange(self.queries)[batch]
        overlap = self.min_overlap(queries)
        jaccard = (1 - overlap / (2 - overlap)).astype(np.float32)
        original = np.square(loss.cdist(self.embs[queries], self.embs[self.queries:],
                                        self.metric)).astype(np.float32)
        original /= self.col_max[queries, None]
        out = np.full((len(queries), self.gallery_size), np.inf)
        out[:, self.keep] = jaccard * np.float32(1 - self.lambda_value) + original * np.float32(
            self.lambda_value)
        return out

    def min_overlap(self, queries: np.ndarray) -> np.ndarray:
        """(B, G') sums over k of min(V[q, k], V[g, k]): the numerator of the Jaccard distance."""
        sub = self.v_query[queries].tocoo()
        gallery = self.v_gallery
        counts = np.diff(gallery.indptr)[sub.col]  # gallery rows sharing each query entry
        starts = np.repeat(gallery.indptr[sub.col] - np.cumsum(counts) + counts, counts)
        entries = starts + np.arange(counts.sum())  # positions in the CSC arrays
        overlap = np.bincount(
            np.repeat(sub.row, counts) * gallery.shape[0] + gallery.indices[entries],
            np.minimum(np.repeat(sub.data, counts), gallery.data[entries]),
            minlength=len(queries) * gallery.shape[0])
        return overlap.reshape(len(queries), gallery.shape[0])


def expand_queries(query_embs: np.ndarray, gallery_embs: np.ndarray, neighbours: np.ndarray,
                   alpha: float | None = None) -> np.ndarray:
    """Average query expansion: each query becomes the mean of itself and its neighbours.

    Args:
        query_embs: (Q, D); gallery_embs: (G, D).
        neighbours: (Q, K) gallery indices of each query's K nearest valid entries.
        alpha: None for the plain mean; otherwise alpha-QE weights max(cos, 0) ** alpha for each
            neighbour (the query itself weighs 1), as fast-reid weights its expansion.

    Returns:
        (Q, D) float32 expanded queries.
    """
    query = query_embs.astype(np.float64)
    found = gallery_embs[neighbours].astype(np.float64)  # (Q, K, D)
    if alpha is None:
        weights = np.ones(neighbours.shape)
    else:
        unit = found / np.maximum(np.linalg.norm(found, axis=-1, keepdims=True), 1e-12)
        unit_query = query / np.maximum(np.linalg.norm(query, axis=-1, keepdims=True), 1e-12)
        weights = np.maximum(np.einsum('qkd,qd->qk', unit, unit_query), 0) ** alpha
    total = query + np.einsum('qk,qkd->qd', weights, found)
    return (total / (1 + weights.sum(1, keepdims=True))).astype(np.float32)
