#!/usr/bin/env python3
"""Times evaluate.evaluate against the per-query loop on a Market-1501-sized case, and memory.

    python benchmarks/evaluate_speed.py [--loop_queries 300] [--repeats 3] [--large]
        [--distractors_500k]
    python benchmarks/evaluate_speed.py --mars [--mars_scale 1.0]

Embeddings are 128-D, clustered by identity (a weak model: mAP about 15%) and, as the worst
case for evaluate.py, pure noise. The loop runs on a sample of the queries and is scaled up;
both are timed in this one run. --large also
reports the peak memory of a 20,000 x 200,000 case, which never holds the whole distance matrix;
--distractors_500k the time and peak memory of 3,368 queries against Market-1501's test set
plus the 500k distractors (519,732 images).

--mars instead times the whole `evaluate.py --excluder mars --tracklets max
--tracklet_normalize` command (reading the CSVs, pooling the HDF5 files, scoring) on synthetic
embeddings with MARS's test-set structure: 681,089 128-D frames in 12,180 tracklets, 1,980 of
them queries, 6 cameras; tracklet lengths spread as MARS's (2 to several hundred frames, mean
56), 5% junk and 20% distractor tracklets (chosen here; MARS's own shares differ a little). It
reports the command's wall time and peak memory, and the peak of NumPy allocations while the
gallery is pooled (tracemalloc), against the size of all its frames' embeddings.
"""
import argparse
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import evaluate  # noqa: E402
from _bench import describe  # noqa: E402
from excluders import market1501  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument('--loop_queries', type=int, default=300, help='Queries the slow loop scores.')
parser.add_argument('--repeats', type=int, default=3,
                    help='Runs of evaluate per case; the fastest is reported.')
parser.add_argument('--large', action='store_true', help='Also the 20,000 x 200,000 memory case.')
parser.add_argument('--distractors_500k', action='store_true',
                    help='Also 3,368 queries against a 519,732-image gallery.')
parser.add_argument('--mars', action='store_true',
                    help='Only the MARS tracklet evaluation (681,089 frames, 12,180 tracklets).')
parser.add_argument('--mars_scale', type=float, default=1.0,
                    help='--mars: fraction of MARS\'s frames, tracklets and queries (a toy run).')
MARS = {'frames': 681089, 'tracklets': 12180, 'queries': 1980, 'identities': 634, 'cameras': 6}


def market_like(rng, queries, gallery, identities, noise=1.3, dim=128):
    """Market-style names (6 cameras, junk -1, distractors 0000) and clustered embeddings.

    noise: spread around each identity's centre (unit normal); None gives pure noise.
    """
    gallery_ids = rng.integers(1, identities + 1, gallery)
    gallery_ids[:gallery // 12] = -1  # as many junk and distractor images as Market-1501 has
    gallery_ids[gallery // 12:gallery // 6] = 0
    query_ids = rng.choice(gallery_ids[gallery_ids > 0], queries)
    centers = rng.normal(size=(identities + 1, dim))

    def split(ids, prefix):
        pids = np.array([f'{i:04d}' if i >= 0 else '-1' for i in ids])
        cams = rng.integers(1, 7, len(ids))
        fids = np.array([f'{prefix}/{p}_c{c}s1_{n:06d}_00.jpg'
                         for n, (p, c) in enumerate(zip(pids, cams, strict=True))])
        embs = rng.normal(size=(len(ids), dim))
        if noise is not None:
            embs = centers[np.maximum(ids, 0)] + noise * embs
        embs[ids <= 0] = rng.normal(size=((ids <= 0).sum(), dim))
        return pids, fids, embs.astype(np.float32)

    (query_pids, query_fids, query_embs) = split(query_ids, 'query')
    (gallery_pids, gallery_fids, gallery_embs) = split(gallery_ids, 'bounding_box_test')
    return (query_pids, query_fids, query_embs, gallery_pids, gallery_fids, gallery_embs,
            market1501.Excluder(gallery_fids))


def mars_like(rng, scale: float) -> dict:
    """MARS-shaped test tracklets: (pid, camera, length) each, and the query tracklets."""
    count = max(20, round(MARS['tracklets'] * scale))
    frames = max(2 * count, round(MARS['frames'] * scale))
    identities = max(4, round(MARS['identities'] * scale))
    # Lengths: long-tailed as MARS's, at least 2 frames, summing to `frames` exactly.
    spread = rng.lognormal(3.5, 0.9, count)
    lengths = 2 + np.floor(spread * (frames - 2 * count) / spread.sum()).astype(int)
    np.add.at(lengths, rng.choice(count, frames - lengths.sum()), 1)
    kind = rng.random(count)
    pids = np.where(kind < 0.05, -1, np.where(kind < 0.25, 0, rng.integers(1, identities + 1,
                                                                            count)))
    cams = rng.integers(1, MARS['cameras'] + 1, count)
    # Queries: one tracklet per identity and camera, of identities seen by 2+ cameras.
    candidates = {}
    for t in rng.permutation(count):
        if pids[t] > 0:
            candidates.setdefault((pids[t], cams[t]), t)
    seen = {}
    for pid, _ in candidates:
        seen[pid] = seen.get(pid, 0) + 1
    queries = [t for (pid, _), t in candidates.items() if seen[pid] > 1]
    queries = np.sort(rng.permutation(queries)[:max(2, round(MARS['queries'] * scale))])
    return {'pids': pids, 'cams': cams, 'lengths': lengths, 'queries': queries}


def write_mars(folder: Path, rng, data: dict, dim: int = 128) -> dict:
    """CSVs (one line per frame, MARS names) and HDF5 embeddings, written chunk by chunk."""
    import h5py
    centres = rng.normal(size=(data['pids'].max() + 1, dim)).astype(np.float32)
    # Each tracklet's frames from a stream of their own: a query frame has the same embedding
    # in the query's file as in the gallery's, as when one model embeds both.
    pid_names = np.array(['00-1' if p < 0 else f'{p:04d}' for p in data['pids']])
    files = {}
    for side, tracks in (('query', data['queries']), ('test', np.arange(len(data['pids'])))):
        csv_file, h5_file = folder / f'mars_{side}.csv', folder / f'mars_{side}.h5'
        total = int(data['lengths'][tracks].sum())
        with open(csv_file, 'w') as csv, h5py.File(h5_file, 'w') as f:
            emb = f.create_dataset('emb', (total, dim), np.float32)
            row = 0
            for t in tracks:
                pid, n = pid_names[t], data['lengths'][t]
                csv.write(''.join(f'{pid},bbox_test/{pid}/{pid}C{data["cams"][t]}T{t:04d}'
                                  f'F{k:03d}.jpg\n' for k in range(1, n + 1)))
                # A weak model: frames near their tracklet's point, tracklets near the identity's.
                own = np.random.default_rng([1, t])
                base = centres[max(0, data['pids'][t])] + 2 * own.normal(size=dim).astype(
                    np.float32)
                emb[row:row + n] = base + 0.5 * own.normal(size=(n, dim)).astype(np.float32)
                row += n
        files[side] = (csv_file, h5_file, total)
    return files


# Runs a script as `python script ARGS` does and prints its own peak memory (ru_maxrss, KiB)
# on standard error's last line, whatever its exit.
PEAK_WRAPPER = """import os, resource, runpy, sys
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(sys.argv[0])  # where `python script` looks for imports
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def timed_run(command: list) -> tuple[float, float, str]:
    """Wall seconds, peak memory (MiB) and standard output of `python COMMAND...`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, '-c', PEAK_WRAPPER, *map(str, command)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr)
    return seconds, int(done.stderr.split()[-1]) / 2**10, done.stdout.strip()


def run_mars(args, machine: str) -> None:
    import tracklets
    from excluders import mars
    rng = np.random.default_rng(0)
    data = mars_like(rng, args.mars_scale)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_mars(Path(tmp), rng, data)
        (query_csv, query_h5, query_frames), (test_csv, test_h5, test_frames) = files.values()
        command = [Path(__file__).resolve().parents[1] / 'evaluate.py',
                   '--excluder', 'mars', '--tracklets', 'max', '--tracklet_normalize',
                   '--query_dataset', query_csv, '--gallery_dataset', test_csv,
                   '--gallery_embeddings', test_h5]
        runs = {'query embeddings of their own': timed_run(
                    [*command, '--query_embeddings', query_h5]),
                'query frames from the gallery': timed_run(command)}
        # The pooling alone, in this process: NumPy allocations while the gallery is pooled.
        pids, fids = common.load_dataset(test_csv)
        gallery = tracklets.Tracklets(pids, fids, mars.PATTERN, str(test_csv))
        tracemalloc.start()
        gallery.pool(str(test_h5), 'max', True, str(test_csv))
        pooling_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    dim = gallery.embs.shape[1]
    print(f'MARS-sized tracklets: {test_frames:,} frames in {len(gallery.names):,} tracklets, '
          f'{len(data["queries"]):,} queries ({query_frames:,} frames), {dim}-D')
    for name, (seconds, peak, output) in runs.items():
        print(f'evaluate.py --excluder mars --tracklets max --tracklet_normalize, {name}: '
              f'{seconds:.1f} s, peak memory {peak:.0f} MiB  [{machine}]')
        print(f'  {output.splitlines()[-1]}')
    print(f'pooling the gallery: peak {pooling_peak:.0f} MiB of NumPy allocations, chunks of '
          f'{tracklets.CHUNK_ROWS:,} frames ({tracklets.CHUNK_ROWS * dim * 4 / 2**20:.0f} MiB), '
          f'pooled {len(gallery.names) * dim * 8 / 2**20:.0f} MiB (float64); all frames\' '
          f'embeddings would be {test_frames * dim * 4 / 2**20:.0f} MiB')


def main():
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    machine = describe()
    if args.mars:
        return run_mars(args, machine)
    print('Market-1501-sized: 3,368 queries x 19,732 gallery, 128-D, euclidean')
    for kind, noise in (('clustered', 1.3), ('random', None)):
        data = market_like(rng, 3368, 19732, 750, noise)
        sample = rng.choice(3368, args.loop_queries, replace=False)
        sampled = tuple(x[sample] for x in data[:3]) + data[3:]
        for market_ap in (False, True):
            name = 'Market-1501 MATLAB AP' if market_ap else 'scikit-learn AP'
            fast = []
            for _ in range(args.repeats):  # the best of a few: other processes only add time
                start = time.perf_counter()
                result = evaluate.evaluate(*data, market_ap=market_ap)
                fast.append(time.perf_counter() - start)
            fast = min(fast)
            start = time.perf_counter()
            evaluate.evaluate_loop(*sampled, market_ap=market_ap)
            loop = (time.perf_counter() - start) * 3368 / args.loop_queries
            print(f'{kind:9s} {name:21s} evaluate {fast:5.2f} s | per-query loop {loop:6.1f} s '
                  f'(from {args.loop_queries} queries) | {loop / fast:5.1f}x faster | '
                  f'mAP {result["mAP"]:.2%}  [{machine}]')
    if args.large:
        data = market_like(rng, 20000, 200000, 5000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        start = time.perf_counter()
        evaluate.evaluate(*data, batch_size=256)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f'20,000 x 200,000: {time.perf_counter() - start:.1f} s, peak memory {peak:.2f} GiB '
              f'(before: {before:.2f} GiB; the full distance matrix alone would be '
              f'{20000 * 200000 * 8 / 2**30:.0f} GiB)  [{machine}]')

    if args.distractors_500k:
        data = market_like(rng, 3368, 519732, 750)
        start = time.perf_counter()
        result = evaluate.evaluate(*data)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f'3,368 x 519,732 (Market-1501 + 500k distractors): '
              f'{time.perf_counter() - start:.1f} s, peak memory {peak:.2f} GiB, '
              f'mAP {result["mAP"]:.2%}  [{machine}]')


if __name__ == '__main__':
    main()
