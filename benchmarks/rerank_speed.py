#!/usr/bin/env python3
"""Time and peak memory of k-reciprocal re-ranking (rerank.Reranker, then evaluate.evaluate).

    python benchmarks/rerank_speed.py [--small 500 2000] [--dense_market] [--msmt17]

Synthetic clustered 128-D embeddings with Market-1501-style names. By default: a small case,
ours against the dense implementation of the published algorithm that tests/test_rerank.py
holds (same re-ranked distances), and the Market-1501 size (3,368 + 15,913) with ours only,
as the dense one needs about 9 GB there (--dense_market runs it anyway). --msmt17: the
MSMT17 size, 11,659 + 82,161, where the dense version would need over 100 GB. Galleries get
1/12 extra junk (identity -1), which the excluder ignores and re-ranking leaves out, so that
the re-ranked sizes are the ones named. Peak memory
is that of NumPy's allocations during the step (tracemalloc), beside the process's maximum
resident size.
"""
import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
import evaluate  # noqa: E402
import loss  # noqa: E402
import rerank  # noqa: E402
from _bench import describe  # noqa: E402
from evaluate_speed import market_like  # noqa: E402
from test_rerank import dense_re_ranking  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument('--small', type=int, nargs=2, default=(500, 2000), metavar=('Q', 'G'),
                    help='Queries and gallery of the case run both ways.')
parser.add_argument('--no_market', action='store_true', help='Skip the Market-1501 size.')
parser.add_argument('--dense_market', action='store_true',
                    help='Also the dense version at the Market-1501 size (about 9 GB).')
parser.add_argument('--msmt17', action='store_true', help='Also the MSMT17 size (ours only).')


def measure(step):
    """(result, seconds, peak MiB of NumPy allocations) of step()."""
    tracemalloc.start()
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def ours(data):
    keep = ~evaluate.always_ignored(data[6], data[1])
    reranker = rerank.Reranker(data[2], data[5], 'euclidean', keep=keep)
    return evaluate.evaluate(*data, distances=reranker)


def dense(data):
    keep = ~evaluate.always_ignored(data[6], data[1])
    query, gallery = data[2], data[5][keep]
    final = np.full((len(query), len(data[5])), np.inf)
    final[:, keep] = dense_re_ranking(loss.cdist(query, gallery), loss.cdist(query, query),
                                      loss.cdist(gallery, gallery), 20, 6, 0.3)
    return evaluate.evaluate(*data, distances=lambda rows: final[rows])


def report(name, data, machine, with_dense):
    result, seconds, peak = measure(lambda: ours(data))
    line = (f'{name}: ours {seconds:.1f} s, peak {peak:.0f} MiB, mAP {result["mAP"]:.2%} '
            f'(plain {evaluate.evaluate(*data)["mAP"]:.2%})')
    if with_dense:
        want, dense_seconds, dense_peak = measure(lambda: dense(data))
        line += (f' | dense {dense_seconds:.1f} s, peak {dense_peak:.0f} MiB, mAP '
                 f'{want["mAP"]:.2%}, |mAP difference| {abs(want["mAP"] - result["mAP"]):.1e}')
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f'{line} | process max RSS so far {maxrss:.2f} GiB  [{machine}]', flush=True)


def main():
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    machine = describe()
    queries, gallery = args.small
    report(f'{queries:,} + {gallery:,}', market_like(rng, queries, gallery, max(2, gallery // 20)),
           machine, True)
    if not args.no_market:
        report('Market-1501 size, 3,368 + 15,913', market_like(rng, 3368, 17359, 750), machine,
               args.dense_market)
    if args.msmt17:
        report('MSMT17 size, 11,659 + 82,161', market_like(rng, 11659, 89630, 3060), machine,
               False)


if __name__ == '__main__':
    main()
