#!/usr/bin/env python3
"""Scores query embeddings against gallery embeddings: mAP, CMC and mINP as JSON.

    python evaluate.py --excluder market1501 \\
        --query_dataset data/market1501_query.csv --query_embeddings exp/query.h5 \\
        --gallery_dataset data/market1501_test.csv --gallery_embeddings exp/test.h5 \\
        --metric euclidean --filename exp/market1501_evaluation.json

Optionally, in this order: multi-query pooling (--multi_query), average query expansion
(--aqe) and k-reciprocal re-ranking (--rerank). Video datasets (MARS) are scored per tracklet
with --tracklets max|mean: the CSVs list frames, pooled into one entry per tracklet.
"""
import argparse
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score
from threadpoolctl import threadpool_limits

import common
import experiment
import loss
import rerank
import tracklets
from model import import_plugin, plugin_names

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument('--excluder', required=True, choices=plugin_names('excluders'),
                    help='The evaluation protocol: which gallery entries to ignore for a query.')
parser.add_argument('--query_dataset', required=True,
                    help='CSV of the queries (identity,path); row i belongs to embedding i.')
parser.add_argument('--query_embeddings', default=None,
                    help='HDF5 file with the query embeddings (dataset "emb" or "embs").\n'
                         'Required, except with --tracklets: then, if not given, the query\n'
                         "frames' embeddings are those of the same files in the gallery.")
parser.add_argument('--gallery_dataset', required=True, help='CSV of the gallery.')
parser.add_argument('--gallery_embeddings', required=True, nargs='+',
                    help='HDF5 file with the gallery embeddings, or the parts of embed.py --shard\n'
                         '(or search.py join\'s file of them).')
parser.add_argument('--metric', default='euclidean', choices=loss.METRICS,
                    help='Distance between embeddings; use the one the model was trained with '
                         '(cosine for BNNeck features, as the strong baseline evaluates).')
parser.add_argument('--filename', default=None,
                    help='Where to write the JSON result; nothing is written if not given.')
parser.add_argument('--use_market_ap', action='store_true', default=False,
                    help="AP as the Market-1501 MATLAB code computes it (trapezoid rule) instead\n"
                         "of scikit-learn's average_precision_score (the default for images).")
parser.add_argument('--sklearn_ap', action='store_true', default=False,
                    help="scikit-learn's AP where the protocol's default is the MATLAB one\n"
                         '(--tracklets, as the MARS evaluation code).')
parser.add_argument('--batch_size', default=256, type=common.positive_int,
                    help='Queries scored at once; memory is about 40 x batch_size x gallery bytes.')
parser.add_argument('--rerank', action='store_true', default=False,
                    help='k-reciprocal re-ranking (Zhong et al., CVPR 2017), exactly as their\n'
                         'published Python version, in bounded memory.')
parser.add_argument('--k1', type=common.positive_int, default=None,
                    help='re-ranking: size of the k-reciprocal neighbourhood (default: 20).')
parser.add_argument('--k2', type=common.positive_int, default=None,
                    help='re-ranking: neighbours of the local query expansion, at most k1\n'
                         '(default: 6; 1 turns it off).')
parser.add_argument('--lambda_value', type=float, default=None,
                    help='re-ranking: weight of the original distance against the Jaccard\n'
                         'distance, in [0, 1] (default: 0.3).')
parser.add_argument('--aqe', type=common.positive_int, default=None, metavar='K',
                    help='average query expansion: each query becomes the mean of itself and its\n'
                         'K nearest gallery entries that the excluder keeps.')
parser.add_argument('--aqe_alpha', type=float, default=None,
                    help='alpha-weighted query expansion: neighbours weigh max(cosine, 0)^alpha,\n'
                         'the query 1 (fast-reid uses 3).')
parser.add_argument('--multi_query', choices=('mean', 'max'), default=None,
                    help='multi-query: each query becomes the mean or max of the embeddings of\n'
                         'all images of its identity and camera in --multi_query_dataset.')
parser.add_argument('--multi_query_dataset', default=None,
                    help='CSV of the images pooled for multi-query (Market-1501: gt_bbox).')
parser.add_argument('--multi_query_embeddings', default=None,
                    help='HDF5 file with the embeddings of --multi_query_dataset.')
group = parser.add_argument_group('video', 'Tracklets of frames, as MARS evaluates them.')
group.add_argument('--tracklets', choices=tracklets.POOLINGS, default=None,
                   help='score tracklets, not images: the CSVs list frames, and each tracklet\n'
                        "(read from the file names by the excluder's pattern) becomes the\n"
                        'element-wise max or mean of its frames\' embeddings. The MARS\n'
                        'authors: --excluder mars --tracklets max --tracklet_normalize.')
group.add_argument('--tracklet_normalize', action='store_true', default=False,
                   help='L2-normalise each pooled tracklet embedding (MARS\'s own code does).')
RERANK_DEFAULTS = {'k1': 20, 'k2': 6, 'lambda_value': 0.3}

# A batch of queries holds about 40 bytes per distance: this bounds it to ~640 MiB (both threads),
# whatever the gallery size.
BATCH_ENTRIES = 2**23
# score_row sorts a query's near entries when there are fewer than this many per match, and
# counts them once per match otherwise. Both give the same ranks; from 16 to 64 the time was
# the same within noise on the Market-sized benchmark.
SORT_PER_MATCH = 32
group = parser.add_argument_group('results page', 'A folder with index.html and pictures.')
group.add_argument('--report', default=None, metavar='DIR',
                   help='Write the results page into DIR: summary, CMC curve, AP histogram and\n'
                        'the ranked gallery images of chosen queries.')
group.add_argument('--report_queries', default=20, type=common.nonnegative_int,
                   help='Queries shown on the page (default 20).')
group.add_argument('--report_order', default='worst', choices=('worst', 'best', 'random'),
                   help='Which queries: lowest AP first (with a few of the best for contrast),\n'
                        'highest first, or a random sample (default: worst).')
group.add_argument('--top_k', default=10, type=common.positive_int,
                   help='Gallery images shown per query (default 10).')
group.add_argument('--image_root', default=None,
                   help='Folder the CSVs\' image paths are relative to, for the page. Default:\n'
                        'the image_root of the experiment root holding --query_embeddings\n'
                        '(its args.json), else the current folder.')


# ----------------------------------------------------------------------------- the definition
def evaluate_loop(query_pids: np.ndarray, query_fids: np.ndarray, query_embs: np.ndarray,
                  gallery_pids: np.ndarray, gallery_fids: np.ndarray, gallery_embs: np.ndarray,
                  excluder, metric: str = 'euclidean', market_ap: bool = False,
                  distances: Callable[[slice], np.ndarray] | None = None) -> dict:
    """The straightforward per-query evaluation: slow, but obviously right.

    `evaluate` computes the same numbers in query batches, without sorting whole rows; the
    tests and benchmarks/evaluate_speed.py compare the two. Arguments and result as `evaluate`.
    """
    distances = distances or plain_distances(query_embs, gallery_embs, metric)
    aps, first_ranks, inps = np.full(len(query_pids), np.nan), [], []
    for i in range(len(query_pids)):
        dists = distances(slice(i, i + 1))[0]
        keep = ~excluder(query_fids[i:i + 1])[0]
        dists, labels = dists[keep], gallery_pids[keep] == query_pids[i]
        if not labels.any():
            continue
        order = np.argsort(dists, kind='stable')  # ties keep gallery order, as MATLAB's sort
        hits = np.flatnonzero(labels[order])  # 0-based ranks of the matches
        if market_ap:  # the MATLAB loop; entries between matches leave its sum unchanged
            aps[i] = 0.0
            for n, hit in enumerate(hits, start=1):
                old_precision = (n - 1) / hit if hit else 1.0
                aps[i] += (old_precision + n / (hit + 1)) / 2 / len(hits)
        else:
            aps[i] = average_precision_score(labels, 1 / (1 + dists))
        first_ranks.append(hits[0])
        inps.append(len(hits) / (hits[-1] + 1))
    return _summary(aps, np.array(first_ranks, int), np.array(inps), len(gallery_pids))


def _summary(aps: np.ndarray, first_ranks: np.ndarray, inps: np.ndarray, gallery_size: int) -> dict:
    """Averages over the queries that have a match; `aps` holds NaN for those that have none."""
    valid = ~np.isnan(aps)
    cmc = np.bincount(first_ranks, minlength=gallery_size)[:gallery_size].cumsum()
    cmc = cmc / max(1, valid.sum())
    return {'mAP': float(aps[valid].mean()) if valid.any() else 0.0,
            'mINP': float(inps.mean()) if len(inps) else 0.0,
            'CMC': cmc.tolist(),
            'aps': [None if np.isnan(ap) else float(ap) for ap in aps]}


# ----------------------------------------------------------------------------- the fast version
def evaluate(query_pids: np.ndarray, query_fids: np.ndarray, query_embs: np.ndarray,
             gallery_pids: np.ndarray, gallery_fids: np.ndarray, gallery_embs: np.ndarray,
             excluder, metric: str = 'euclidean', market_ap: bool = False,
             batch_size: int = 256,
             distances: Callable[[slice], np.ndarray] | None = None) -> dict:
    """mAP, CMC and mINP of the queries (Q,) against the gallery (G,), in batches of queries.

    Args:
        query_pids, query_fids: (Q,) identities and file names; likewise gallery_* with (G,).
        query_embs, gallery_embs: (Q, D) and (G, D) embeddings.
        excluder: an excluders.*.Excluder built on the gallery fids.
        metric: one of loss.METRICS.
        market_ap: the Market-1501 MATLAB trapezoid AP instead of scikit-learn's.
        batch_size: queries at once; memory grows with batch_size x G. Fewer where G is so
            large that a batch would pass BATCH_ENTRIES distances.
        distances: a function from a slice of queries to their (B, G) float64 distances, e.g.
            a rerank.Reranker; by default `metric` distances of the embeddings.

    Returns:
        {'mAP': float, 'mINP': float, 'CMC': list (G,), 'aps': list (Q,) with None for queries
        without a valid match, which are left out of mAP, mINP and CMC}.

    For each query, the gallery entries that the excluder masks count for nothing. A match's
    rank is its position when sorting by distance with ties kept in gallery order (as a stable
    sort and MATLAB do); scikit-learn's AP counts, for each match, all entries scoring at least
    as high (score 1/(1+d)). Both only need, per match, counts of the entries ahead of it: a
    few comparison passes over the row instead of sorting the whole gallery.
    """
    finish = None
    if distances is None and metric == 'euclidean':
        # Ranks only need squared distances; clamping and the square root are left to the few
        # entries that can be ahead of a match. Over the whole (Q, G) matrix they cost a tenth
        # of the time.
        to_gallery = loss.cdist_to(gallery_embs, 'sqeuclidean', clamp=False)
        distances, finish = (lambda batch: to_gallery(query_embs[batch])), _root
    distances = distances or plain_distances(query_embs, gallery_embs, metric)
    batch_size = max(1, min(batch_size, BATCH_ENTRIES // max(1, len(gallery_pids))))
    codes = {pid: code for code, pid in enumerate(np.unique(np.r_[query_pids, gallery_pids]))}
    query_codes = np.array([codes[pid] for pid in query_pids])
    gallery_codes = np.array([codes[pid] for pid in gallery_pids])

    def batch_of(start: int) -> tuple:
        """A batch's distances (B, G), valid entries and matches (B, G) bool."""
        batch = slice(start, start + batch_size)
        valid = ~excluder(query_fids[batch])
        matches = valid & (query_codes[batch, None] == gallery_codes[None, :])
        return start, distances(batch), valid, matches

    def score_batch(start, dists, valid, matches) -> list[tuple[int, float, int, float]]:
        """(query, AP, first rank, INP) of each query of the batch that has a match."""
        return [(start + row, *score_row(dists[row], valid[row], matches[row], market_ap, finish))
                for row in np.flatnonzero(matches.any(axis=1))]

    # A second thread computes the next batch (the BLAS product, which releases the GIL) while
    # this one scores the current batch (Python, which holds it): two batches in memory. The
    # product gets the other cores; on 2 cores, BLAS threads that spin while they wait for work
    # would take the scoring thread's core.
    starts = range(0, len(query_pids), batch_size)
    results = []
    blas_threads = max(1, len(os.sched_getaffinity(0)) - 1)
    with threadpool_limits(blas_threads, user_api='blas'), ThreadPoolExecutor(1) as pool:
        computed = None
        for start in starts:
            computing = pool.submit(batch_of, start)
            if computed:
                results += score_batch(*computed.result())
            computed = computing
        if computed:
            results += score_batch(*computed.result())
    aps = np.full(len(query_pids), np.nan)
    if results:
        rows, batch_aps, first_ranks, inps = map(np.array, zip(*results, strict=True))
        aps[rows] = batch_aps
    else:
        first_ranks, inps = np.zeros(0, int), np.zeros(0)
    return _summary(aps, first_ranks.astype(int), inps, len(gallery_pids))


def score_row(dists: np.ndarray, valid: np.ndarray, matches: np.ndarray, market_ap: bool,
              finish: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, int, float]:
    """AP, 0-based rank of the first match and INP of one query with at least one match.

    Args:
        dists: (G,) distances. valid: (G,) bool, the entries the excluder keeps.
        matches: (G,) bool, the valid matches.
        finish: a non-decreasing function that turns `dists` into the distances that define
            the ranking (the square root of squared distances); None: `dists` are those.
    """
    # Entries farther than the farthest match are never ahead of one: count among the nearer
    # ones only (in gallery order). The margin keeps those whose score 1/(1+d) rounds to that
    # of the farthest match, and those that `finish` rounds to its distance.
    farthest = dists[matches].max()
    near = np.flatnonzero((dists <= farthest + 1e-8 * (1 + abs(farthest))) & valid)
    near_dists = dists[near] if finish is None else finish(dists[near])
    hits = np.flatnonzero(matches[near])  # positions in `near`
    scores = 1 / (1 + near_dists)  # as the loop computes them: ties stay ties
    hit_scores = np.sort(scores[hits])
    # Counting the entries ahead of each match costs O(near) per match; with many matches,
    # one stable sort of the near entries is cheaper.
    if len(hits) * SORT_PER_MATCH > len(near):
        order = np.argsort(near_dists, kind='stable')
        position = np.empty(len(near), int)
        position[order] = np.arange(len(near))
        ranks = np.sort(position[hits])
        at_least = np.searchsorted(-scores[order], -hit_scores, 'right')  # scores >= each
    elif market_ap:
        ranks = np.sort(_stable_ranks(near_dists, hits))
    else:
        at_least = np.array([np.count_nonzero(scores >= s) for s in hit_scores])
        # Of equally distant hits, the first in gallery order comes first.
        hit_dists = near_dists[hits]
        first_hit = np.argmin(hit_dists)
        last_hit = len(hits) - 1 - np.argmax(hit_dists[::-1])
        ranks = _stable_ranks(near_dists, hits[[first_hit, last_hit]])
    if market_ap:
        n = np.arange(1, len(hits) + 1)
        # The precision one rank earlier; 1 before the first entry, as MATLAB starts.
        previous = np.where(ranks > 0, (n - 1) / np.maximum(ranks, 1), 1.0)
        ap = np.mean((n / (ranks + 1) + previous) / 2)
    else:
        hits_at_least = len(hits) - np.searchsorted(hit_scores, hit_scores, 'left')
        ap = np.mean(hits_at_least / at_least)
    return ap, ranks[0], len(hits) / (ranks[-1] + 1)


def _root(squared: np.ndarray) -> np.ndarray:
    """Euclidean distances from unclamped squared ones, exactly as loss.cdist_to computes them."""
    return np.sqrt(np.maximum(squared, 0.0) + 1e-12)


def plain_distances(query_embs: np.ndarray, gallery_embs: np.ndarray,
                    metric: str) -> Callable[[slice], np.ndarray]:
    """The function from a slice of queries to their (B, G) `metric` distances."""
    to_gallery = loss.cdist_to(gallery_embs, metric)
    return lambda batch: to_gallery(query_embs[batch])


def always_ignored(excluder, query_fids: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(G,) bool: the gallery entries the excluder ignores for every query (junk)."""
    ignored = None
    for start in range(0, len(query_fids), batch_size):
        mask = excluder(query_fids[start:start + batch_size]).all(axis=0)
        ignored = mask if ignored is None else ignored & mask
    return ignored


def _stable_ranks(dists: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """0-based positions of the entries `hits` of `dists` (G,) after a stable sort.

    Counting the entries ahead of each hit costs O(G) per hit, much less than sorting the row.
    """
    ranks = []
    for hit in hits:
        rank = np.count_nonzero(dists < dists[hit])
        if np.count_nonzero(dists == dists[hit]) > 1:  # equal distances keep gallery order
            rank += np.count_nonzero(dists[:hit] == dists[hit])
        ranks.append(rank)
    return np.array(ranks, int)


def summary_line(result: dict) -> str:
    """`mAP: 69.14% | top-1: 84.92% top-2: 90.11% | top-5: 94.21% | top-10: 96.52%`."""
    cmc = result['CMC']
    line = f"mAP: {result['mAP']:.2%}"
    for group in ((1, 2), (5,), (10,)):
        ranks = [k for k in group if k <= len(cmc)]
        if ranks:
            line += ' | ' + ' '.join(f'top-{k}: {cmc[k - 1]:.2%}' for k in ranks)
    return line


# ----------------------------------------------------------------------------- before scoring
def check_options(args: argparse.Namespace) -> dict:
    """What runs besides plain scoring, with its parameters; bad combinations are InputErrors."""
    given = [f'--{name}' for name in RERANK_DEFAULTS if getattr(args, name) is not None]
    if given and not args.rerank:
        raise common.InputError(f'{" ".join(given)} only apply with --rerank')
    if args.aqe_alpha is not None and args.aqe is None:
        raise common.InputError('--aqe_alpha only applies with --aqe K')
    files = (args.multi_query_dataset, args.multi_query_embeddings)
    if args.multi_query and None in files:
        raise common.InputError(f'--multi_query {args.multi_query} needs both '
                                '--multi_query_dataset and --multi_query_embeddings')
    if not args.multi_query and files != (None, None):
        raise common.InputError('--multi_query_dataset and --multi_query_embeddings need '
                                '--multi_query mean or max')
    if args.query_embeddings is None and not args.tracklets:
        raise common.InputError('--query_embeddings is required (only --tracklets can take the '
                                'query frames from the gallery)')
    if args.tracklet_normalize and not args.tracklets:
        raise common.InputError('--tracklet_normalize only applies with --tracklets max|mean')
    if args.tracklets and args.multi_query:
        raise common.InputError('--multi_query pools images of a query\'s identity and camera; '
                                'with --tracklets a query is already a pooled tracklet')
    if args.use_market_ap and args.sklearn_ap:
        raise common.InputError('--use_market_ap and --sklearn_ap contradict each other')
    market_ap = args.use_market_ap or (args.tracklets is not None and not args.sklearn_ap)
    used = {'multi_query': None, 'aqe': None, 'rerank': None, 'tracklets': None,
            'ap': 'market1501' if market_ap else 'sklearn'}
    if args.tracklets:
        used['tracklets'] = {'pooling': args.tracklets, 'normalize': args.tracklet_normalize}
    if args.multi_query:
        used['multi_query'] = {'pooling': args.multi_query, 'dataset': args.multi_query_dataset}
    if args.aqe:
        used['aqe'] = {'k': args.aqe, 'alpha': args.aqe_alpha}
    if args.rerank:
        used['rerank'] = {name: default if getattr(args, name) is None else getattr(args, name)
                          for name, default in RERANK_DEFAULTS.items()}
        if used['rerank']['k2'] > used['rerank']['k1']:
            raise common.InputError(f"--k2 {used['rerank']['k2']} is larger than --k1 "
                                    f"{used['rerank']['k1']}")
        if not 0 <= used['rerank']['lambda_value'] <= 1:
            raise common.InputError(f"--lambda_value {used['rerank']['lambda_value']} is not in "
                                    "[0, 1]")
    return used


def pool_queries(query_fids: np.ndarray, query_embs: np.ndarray, pool_fids: np.ndarray,
                 pool_embs: np.ndarray, excluder, pooling: str) -> tuple[np.ndarray, int]:
    """Multi-query: each query becomes the mean or max over the pool's images of its identity
    and camera (Market-1501: its gt_bbox boxes); one without such images keeps its embedding.

    Args:
        query_fids: (Q,); query_embs: (Q, D); pool_fids: (M,); pool_embs: (M, D).
        excluder: an excluder with a `parse(fids) -> (pids, cams)` method.
        pooling: 'mean' or 'max'.

    Returns:
        (Q, D) pooled embeddings, and how many queries found no images to pool.
    """
    if not hasattr(excluder, 'parse'):
        raise common.InputError('--multi_query pools the images of a query\'s identity and '
                                'camera: choose an --excluder whose file names have cameras')
    groups = {}
    for row, key in enumerate(zip(*excluder.parse(pool_fids), strict=True)):
        groups.setdefault(key, []).append(row)
    pooled, alone = query_embs.copy(), 0
    for row, key in enumerate(zip(*excluder.parse(query_fids), strict=True)):
        if key in groups:
            members = pool_embs[groups[key]]
            pooled[row] = members.mean(0) if pooling == 'mean' else members.max(0)
        else:
            alone += 1
    return pooled, alone


def nearest_kept(query_fids: np.ndarray, query_embs: np.ndarray, gallery_embs: np.ndarray,
                 excluder, metric: str, k: int, batch_size: int = 256) -> np.ndarray:
    """(Q, k) gallery indices of each query's k nearest entries that the excluder keeps.

    Ignored entries come last, so a query with fewer than k kept entries gets some of them.
    """
    batch_size = max(1, min(batch_size, BATCH_ENTRIES // max(1, len(gallery_embs))))
    out = np.empty((len(query_fids), k), np.int64)
    for start in range(0, len(query_fids), batch_size):
        batch = slice(start, start + batch_size)
        dists = loss.cdist(query_embs[batch], gallery_embs, metric)
        dists[excluder(query_fids[batch])] = np.inf
        part = np.argpartition(dists, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(dists, part, 1), axis=1, kind='stable')
        out[batch] = np.take_along_axis(part, order, 1)
    return out


def describe(used: dict) -> str:
    """`multi-query mean | AQE K=5 | re-ranking k1=20 k2=6 lambda=0.3`, or '' for none."""
    parts = []
    if used.get('tracklets'):
        tracks = used['tracklets']
        parts.append(f"tracklets {tracks['pooling']}" + (' normalized' if tracks['normalize']
                                                          else ''))
    if used['multi_query']:
        parts.append(f"multi-query {used['multi_query']['pooling']}")
    if used['aqe']:
        alpha = used['aqe']['alpha']
        parts.append(f"AQE K={used['aqe']['k']}" + ('' if alpha is None else f' alpha={alpha:g}'))
    if used['rerank']:
        parts.append('re-ranking ' + ' '.join(f'{name.split("_")[0]}={value:g}'
                                              for name, value in used['rerank'].items()))
    return ' | '.join(parts)


def stored_image_root(embeddings_file: str) -> str | None:
    """The image_root in the args.json beside an embeddings file (an experiment root), if any."""
    args_file = Path(embeddings_file).parent / experiment.ARGS_FILE
    root = experiment.read_args(args_file).get('image_root') if args_file.is_file() else None
    return root if isinstance(root, str) else None


def write_report(args: argparse.Namespace, result: dict, used: dict, query_pids: np.ndarray,
                 query_fids: np.ndarray, gallery_pids: np.ndarray, gallery_fids: np.ndarray,
                 distance_rows: Callable, excluder, shown: tuple | None = None) -> None:
    """The results page of --report; `distance_rows(query indices)` gives the distances that
    the evaluation used (re-ranked, or of the expanded or pooled queries). With tracklets,
    `shown` holds the few frames (fids) of each query and gallery tracklet to draw."""
    import report
    image_root = (args.image_root or stored_image_root(args.query_embeddings
                                                       or args.gallery_embeddings) or '.')
    split = {'query': (query_pids, query_fids), 'gallery': (gallery_pids, gallery_fids)}
    splits = {}
    for side, (name, (pids, fids)) in enumerate(split.items()):
        if shown is None:
            paths = np.array([os.path.join(image_root, fid) for fid in fids])
        else:  # a list of a few frames' paths per tracklet
            paths = [[os.path.join(image_root, fid) for fid in frames] for frames in shown[side]]
        splits[name] = {'pids': pids, 'fids': fids, 'paths': paths}
    options = {'protocol (--excluder)': args.excluder, 'metric': args.metric,
               'AP': 'Market-1501 MATLAB' if used['ap'] == 'market1501' else 'scikit-learn',
               'queries': len(query_pids), 'gallery': len(gallery_pids),
               'query embeddings': args.query_embeddings or 'the gallery\'s',
               'gallery embeddings': args.gallery_embeddings, 'images': image_root,
               'options': describe(used) or 'none'}
    try:
        index = report.write_report(
            args.report, result, splits['query'], splits['gallery'], distance_rows,
            lambda rows: excluder(query_fids[rows]), options, args.report_queries,
            args.report_order, args.top_k)
    except OSError as e:
        raise common.InputError(f'cannot write the report into {args.report}: {e}') from None
    print(f'report: {index}', file=sys.stderr)


# ----------------------------------------------------------------------------- main
def load_images(args: argparse.Namespace, used: dict) -> tuple:
    """Query and gallery (pids, fids, embs) of images, and the excluder; with --multi_query the
    queries are already pooled."""
    query_pids, query_fids = common.load_dataset(args.query_dataset)
    gallery_pids, gallery_fids = common.load_dataset(args.gallery_dataset)
    query_embs = common.load_embeddings(args.query_embeddings)
    gallery_embs = common.load_embedding_parts(args.gallery_embeddings)
    inputs = [('query', query_fids, query_embs, args.query_dataset, args.query_embeddings),
              ('gallery', gallery_fids, gallery_embs, args.gallery_dataset,
               ' '.join(args.gallery_embeddings))]
    if args.multi_query:
        pool_fids = common.load_dataset(args.multi_query_dataset)[1]
        pool_embs = common.load_embeddings(args.multi_query_embeddings)
        inputs.append(('multi-query', pool_fids, pool_embs, args.multi_query_dataset,
                       args.multi_query_embeddings))
    for name, fids, embs, csv_file, h5_file in inputs:
        if len(fids) != len(embs):
            raise common.InputError(f'{csv_file} has {len(fids)} rows but the {name} embeddings '
                                    f'have {len(embs)} ({h5_file}): were they computed from '
                                    'another CSV?')
        if embs.shape[1] != query_embs.shape[1]:
            raise common.InputError(f'query embeddings are {query_embs.shape[1]}-D but {name} '
                                    f'embeddings are {embs.shape[1]}-D')
    excluder = import_plugin('excluders', args.excluder).Excluder(gallery_fids)
    if args.multi_query:
        query_embs, alone = pool_queries(query_fids, query_embs, pool_fids, pool_embs, excluder,
                                         args.multi_query)
        used['multi_query']['queries_without_images'] = alone
    return query_pids, query_fids, query_embs, gallery_pids, gallery_fids, gallery_embs, excluder


def load_tracklets(args: argparse.Namespace, used: dict) -> tuple:
    """As load_images, for tracklets: names stand for fids; also the frames the report shows."""
    query, gallery, excluder, info = tracklets.load(
        args.query_dataset, args.query_embeddings, args.gallery_dataset, args.gallery_embeddings,
        import_plugin('excluders', args.excluder), args.tracklets, args.tracklet_normalize)
    used['tracklets'].update(info)
    print(f"tracklets: {info['query_tracklets']} query ({info['query_frames']} frames), "
          f"{info['gallery_tracklets']} gallery ({info['gallery_frames']} frames)",
          file=sys.stderr)
    return (query.pids, query.names, query.embs, gallery.pids, gallery.names, gallery.embs,
            excluder), (query.shown, gallery.shown)


def main() -> None:
    args = parser.parse_args()
    used = check_options(args)
    shown = None
    if args.tracklets:
        loaded, shown = load_tracklets(args, used)
    else:
        loaded = load_images(args, used)
    query_pids, query_fids, query_embs, gallery_pids, gallery_fids, gallery_embs, excluder = loaded

    # Query expansion and re-ranking (after multi-query pooling), in this order.
    if args.aqe:
        if args.aqe > len(gallery_fids):
            raise common.InputError(f'--aqe {args.aqe} is more than the {len(gallery_fids)} '
                                    f'gallery {"tracklets" if args.tracklets else "images"}')
        neighbours = nearest_kept(query_fids, query_embs, gallery_embs, excluder, args.metric,
                                  args.aqe, args.batch_size)
        query_embs = rerank.expand_queries(query_embs, gallery_embs, neighbours, args.aqe_alpha)
    distances = None
    if args.rerank:
        # Junk (ignored for every query) takes no part, as the datasets' usual loaders drop it.
        keep = ~always_ignored(excluder, query_fids, args.batch_size)
        distances = rerank.Reranker(query_embs, gallery_embs, args.metric, **used['rerank'],
                                    keep=keep)

    result = evaluate(query_pids, query_fids, query_embs, gallery_pids, gallery_fids, gallery_embs,
                      excluder, args.metric, used['ap'] == 'market1501', args.batch_size,
                      distances)

    unmatched = [str(fid) for fid, ap in zip(query_fids, result['aps'], strict=True)
                 if ap is None]
    if unmatched:
        names = ', '.join(unmatched[:10])
        if len(unmatched) > 10:
            names += f' and {len(unmatched) - 10} more'
        print(common.printable(f'warning: {len(unmatched)} of {len(query_fids)} queries have no '
                               f'valid match in the gallery and are left out of mAP and CMC: '
                               f'{names}'), file=sys.stderr)
    print(' | '.join(filter(None, [summary_line(result), describe(used)])))
    if args.report:
        write_report(args, result, used, query_pids, query_fids, gallery_pids, gallery_fids,
                     distances or plain_distances(query_embs, gallery_embs, args.metric),
                     excluder, shown)
    if args.filename:
        if args.tracklets:  # the names that `aps` and `unmatched_queries` refer to
            result['query_tracklets'] = query_fids.tolist()
        result.update(args=vars(args), unmatched_queries=unmatched, **used)
        with common.atomic_write(args.filename) as tmp, open(tmp, 'w') as f:
            json.dump(result, f)


if __name__ == '__main__':
    common.run(main)
