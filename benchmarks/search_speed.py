#!/usr/bin/env python3
"""Times search.py on a large synthetic gallery: build, size, query time, memory, faiss recall.

    python benchmarks/search_speed.py [--gallery 1000000] [--dim 128] [--no_faiss]

The gallery is clustered like re-identification embeddings (20 images per identity around its
centre); the queries are new images of gallery identities. Each index is built with the
command line (`search.py index`, reading the HDF5 and the CSV), and searched in a fresh process
that loads the index folder as `search.py query` does, so that its peak memory is that of a
search process. Targets of issue 22 for 1,000,000 x 128-D on 2 cores: exact, a batch of 64 queries
<= 2 s, one query <= 50 ms, memory <= 1.5 GiB; faiss, recall@10 against exact >= 0.99 and one
query <= 5 ms.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
from _bench import describe  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument('--gallery', type=common.positive_int, default=1_000_000)
parser.add_argument('--dim', type=common.positive_int, default=128)
parser.add_argument('--batch', type=common.positive_int, default=64, help='Queries per batch.')
parser.add_argument('--singles', type=common.positive_int, default=50,
                    help='One-query searches timed (the median is reported).')
parser.add_argument('--recall_queries', type=common.positive_int, default=500,
                    help='Queries of the faiss recall@10 measurement.')
parser.add_argument('--no_faiss', action='store_true', help='Only the exact index.')

# Runs in a fresh process: loads an index folder, searches, prints JSON.
SEARCHER = '''
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import gallery
folder, queries_file, batch, singles = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
start = time.perf_counter()
index = gallery.Gallery(folder)
load = time.perf_counter() - start
queries = np.load(queries_file)
index.search(queries[:batch], 10)  # warm-up: pages, BLAS threads
times = []
for _ in range(3):
    start = time.perf_counter()
    index.search(queries[:batch], 10)
    times.append(time.perf_counter() - start)
single = []
for query in queries[:singles]:
    start = time.perf_counter()
    index.search(query[None], 10)
    single.append(time.perf_counter() - start)
found = [[row for row, _ in hits] for hits in index.search(queries, 10)]
print(json.dumps({'load_s': load, 'batch_s': min(times), 'single_s': float(np.median(single)),
                  'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'found': found}))
'''


def clustered(rng, count: int, dim: int, per_identity: int = 20):
    """Embeddings (count, D) around one unit-normal centre per identity; (pids)."""
    identities = max(1, count // per_identity)
    centres = rng.standard_normal((identities, dim), np.float32)
    pids = rng.integers(0, identities, count)
    embs = np.empty((count, dim), np.float32)
    for start in range(0, count, 65536):  # bounded temporaries
        part = slice(start, start + 65536)
        embs[part] = centres[pids[part]] + 0.35 * rng.standard_normal((len(pids[part]), dim),
                                                                       np.float32)
    return embs, pids, centres


def build(folder: Path, kind: str) -> tuple[float, float]:
    """Builds an index with search.py; (seconds, MiB on disk)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / 'search.py'), 'index', '--embeddings',
                           str(folder / 'gallery.h5'), '--dataset', str(folder / 'gallery.csv'),
                           '--out', str(folder / kind), '--index', kind],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f'search.py index --index {kind} failed: {done.stderr[-2000:]}')
    size = sum(p.stat().st_size for p in (folder / kind).rglob('*') if p.is_file())
    return seconds, size / 2**20


def search(folder: Path, kind: str, batch: int, singles: int) -> dict:
    done = subprocess.run([sys.executable, '-c', SEARCHER, str(ROOT), str(folder / kind),
                           str(folder / 'queries.npy'), str(batch), str(singles)],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f'searching {kind} failed: {done.stderr[-2000:]}')
    return json.loads(done.stdout)


def main() -> None:
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        embs, pids, centres = clustered(rng, args.gallery, args.dim)
        common.save_embeddings(folder / 'gallery.h5', embs)
        with open(folder / 'gallery.csv', 'w') as f:
            f.writelines(f'{pid},cam{i % 6}/{pid:06d}_{i:07d}.jpg\n' for i, pid in enumerate(pids))
        count = max(args.batch, args.singles, args.recall_queries)
        query_pids = rng.integers(0, len(centres), count)
        queries = centres[query_pids] + 0.35 * rng.standard_normal((count, args.dim), np.float32)
        np.save(folder / 'queries.npy', queries.astype(np.float32))
        del embs, pids
        print(f'{args.gallery:,} x {args.dim}-D clustered gallery; {describe()}')
        kinds = ['exact'] + ([] if args.no_faiss else ['faiss'])
        results = {}
        for kind in kinds:
            seconds, size = build(folder, kind)
            results[kind] = search(folder, kind, args.batch, args.singles)
            info = json.loads((folder / kind / 'index.json').read_text())
            r = results[kind]
            print(f'{kind:5s}: build {seconds:6.1f} s, {size:7.1f} MiB on disk, load '
                  f'{r["load_s"]:.1f} s | batch of {args.batch}: {r["batch_s"]:.3f} s | one '
                  f'query: {1000 * r["single_s"]:.1f} ms | peak memory {r["peak_mib"]:.0f} MiB'
                  + (f' | {json.dumps(info["faiss"])}' if 'faiss' in info else ''))
        if 'faiss' in results:
            exact, approx = results['exact']['found'], results['faiss']['found']
            recall = np.mean([len(set(a) & set(e)) / len(e)
                              for a, e in zip(approx, exact, strict=True)])
            print(f'faiss recall@10 against exact: {recall:.4f} ({len(exact)} queries)')


if __name__ == '__main__':
    common.run(main)
