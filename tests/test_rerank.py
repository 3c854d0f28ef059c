"""rerank.py: the bounded-memory re-ranking equals a dense implementation of the published one."""
import numpy as np
import pytest

import common
import evaluate
import loss
import rerank
from excluders import market1501


def dense_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    """The published re_ranking(q_g_dist, q_q_dist, g_g_dist, ...), step by step, all dense.

    Written for this test from the algorithm of Zhong et al. (CVPR 2017) as their Python
    version computes it; (Q + G, Q + G) matrices throughout.
    """
    queries, n = len(q_g), len(q_g) + q_g.shape[1]
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    full = np.square(full).astype(np.float32)
    full = (full / full.max(axis=0)).T
    rank = np.argsort(full, axis=1)
    half = int(np.around(k1 / 2))

    def k_reciprocal(i, k):
        forward = rank[i, :k + 1]
        return np.array([j for j in forward if i in rank[j, :k + 1]], int)

    v = np.zeros_like(full)
    for i in range(n):
        own = k_reciprocal(i, k1)
        members = list(own)
        for candidate in own:
            theirs = k_reciprocal(candidate, half)
            if len(np.intersect1d(theirs, own)) > 2. / 3 * len(theirs):
                members += list(theirs)
        members = np.unique(members)
        weight = np.exp(-full[i, members])
        v[i, members] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((queries, n), np.float32)
    holders = [np.flatnonzero(column) for column in v.T]  # the rows with weight on image k
    for i in range(queries):
        overlap = np.zeros(n, np.float32)  # sum over k of min(v[i, k], v[j, k])
        for k in np.flatnonzero(v[i]):
            overlap[holders[k]] += np.minimum(v[i, k], v[holders[k], k])
        jaccard[i] = 1 - overlap / (2 - overlap)
    final = jaccard * (1 - lambda_value) + full[:queries] * lambda_value
    return final[:, queries:]


def random_case(rng, queries=25, gallery=70, dim=6, identities=12):
    gallery_pids = rng.integers(1, identities + 1, gallery)
    query_pids = rng.choice(gallery_pids, queries)
    centers = rng.normal(size=(identities + 1, dim))
    query_embs = (centers[query_pids] + rng.normal(size=(queries, dim))).astype(np.float32)
    gallery_embs = (centers[gallery_pids] + rng.normal(size=(gallery, dim))).astype(np.float32)
    return query_pids, query_embs, gallery_pids, gallery_embs


@pytest.mark.parametrize('k1, k2, lambda_value', [(20, 6, 0.3), (5, 1, 0.0), (7, 3, 0.8),
                                                  (4, 4, 1.0)])
@pytest.mark.parametrize('metric', ['euclidean', 'sqeuclidean', 'cityblock', 'cosine'])
def test_equals_dense_published_algorithm(k1, k2, lambda_value, metric):
    rng = np.random.default_rng(k1 * 100 + k2)
    _, query_embs, _, gallery_embs = random_case(rng)
    want = dense_re_ranking(loss.cdist(query_embs, gallery_embs, metric),
                            loss.cdist(query_embs, query_embs, metric),
                            loss.cdist(gallery_embs, gallery_embs, metric), k1, k2, lambda_value)
    reranker = rerank.Reranker(query_embs, gallery_embs, metric, k1, k2, lambda_value)
    np.testing.assert_allclose(reranker(slice(0, 25)), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(reranker(slice(3, 9)), want[3:9], atol=1e-5, rtol=0)


@pytest.mark.parametrize('market_ap', [False, True])
@pytest.mark.parametrize('k1, k2, lambda_value', [(20, 6, 0.3), (6, 2, 0.5)])
def test_evaluation_of_reranked_distances(k1, k2, lambda_value, market_ap):
    """mAP and CMC of the re-ranked distances: fast path on our blocks == loop on dense ones."""
    rng = np.random.default_rng(k1 + 3 * k2)
    query_pids, query_embs, gallery_pids, gallery_embs = random_case(rng, 30, 90)
    query_pids = np.array([f'{p:04d}' for p in query_pids])
    gallery_pids = np.array([f'{p:04d}' for p in gallery_pids])
    gallery_pids[:8] = '-1'  # junk: left out of re-ranking
    query_fids = np.array([f'{p}_c1s1_{i:06d}_00.jpg' for i, p in enumerate(query_pids)])
    gallery_fids = np.array([f'{p}_c{2 + i % 5}s1_{i:06d}_00.jpg'
                             for i, p in enumerate(gallery_pids)])
    excluder = market1501.Excluder(gallery_fids)
    keep = gallery_pids != '-1'
    dense = np.full((30, 90), np.inf)
    dense[:, keep] = dense_re_ranking(
        loss.cdist(query_embs, gallery_embs[keep]), loss.cdist(query_embs, query_embs),
        loss.cdist(gallery_embs[keep], gallery_embs[keep]), k1, k2, lambda_value)
    data = (query_pids, query_fids, query_embs, gallery_pids, gallery_fids, gallery_embs, excluder)
    slow = evaluate.evaluate_loop(*data, market_ap=market_ap,
                                  distances=lambda rows: dense[rows].astype(np.float64))
    reranker = rerank.Reranker(query_embs, gallery_embs, 'euclidean', k1, k2, lambda_value,
                               keep=~evaluate.always_ignored(excluder, query_fids))
    fast = evaluate.evaluate(*data, market_ap=market_ap, batch_size=7, distances=reranker)
    np.testing.assert_allclose(fast['aps'], slow['aps'], atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast['CMC'], slow['CMC'], atol=1e-6, rtol=0)
    assert abs(fast['mAP'] - slow['mAP']) < 1e-6


def test_refuses_when_memory_is_short(monkeypatch):
    monkeypatch.setattr(rerank, 'available_memory', lambda: 2**20)
    rng = np.random.default_rng(0)
    with pytest.raises(common.InputError, match=r'needs up to \d+\.\d GiB of memory'):
        rerank.Reranker(rng.normal(size=(5, 4)), rng.normal(size=(30, 4)), 'euclidean')


def test_too_few_images_for_k1():
    rng = np.random.default_rng(0)
    with pytest.raises(common.InputError, match='--k1 20 needs more than 20 images'):
        rerank.Reranker(rng.normal(size=(3, 4)), rng.normal(size=(10, 4)), 'euclidean')


@pytest.mark.parametrize('alpha', [None, 3.0])
def test_expand_queries_equals_direct_mean(alpha):
    rng = np.random.default_rng(1)
    query, gallery = rng.normal(size=(4, 5)), rng.normal(size=(20, 5))
    neighbours = rng.integers(0, 20, (4, 3))
    got = rerank.expand_queries(query, gallery, neighbours, alpha)
    for q in range(4):
        vectors = [query[q]] + [gallery[j] for j in neighbours[q]]
        weights = [1.0] + [1.0 if alpha is None else max(0.0, np.dot(query[q], gallery[j])
                                                         / np.linalg.norm(query[q])
                                                         / np.linalg.norm(gallery[j])) ** alpha
                           for j in neighbours[q]]
        want = sum(w * v for w, v in zip(weights, vectors, strict=True)) / sum(weights)
        np.testing.assert_allclose(got[q], want, rtol=1e-5, atol=1e-6)


def test_cosine_pair_distances_equal_cdist():
    rng = np.random.default_rng(2)
    embs = rng.normal(size=(30, 5))
    rows, cols = rng.integers(0, 30, 50), rng.integers(0, 30, 50)
    np.testing.assert_allclose(rerank.pair_distances(embs, rows, cols, 'cosine'),
                               loss.cdist(embs, embs, 'cosine')[rows, cols], atol=1e-12)
