#!/usr/bin/env python3
"""Load test of `search.py serve`: concurrent clients search and add for a fixed time.

    python benchmarks/serve_load.py [--gallery 100000] [--clients 16] [--seconds 60]

Builds a small_cnn experiment (random weights: speed does not depend on them), exports it,
indexes a synthetic gallery of --gallery 128-D embeddings, starts `search.py serve` on a free
port of 127.0.0.1 and runs --clients threads for --seconds. Each client sends one JPEG per
request to POST /search, and every --add_every-th request is a POST /gallery that adds it under
a new identity. Prints requests/s, p50 and p99 latency, failed requests, and whether every
addition is in the gallery afterwards (GET /stats, then the index folder after SIGTERM). Clients
and server share the machine's cores. Everything stays on 127.0.0.1; clients and time are
bounded (at most 64 clients, 600 s).
"""
import argparse
import http.client
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import gallery  # noqa: E402
import service  # noqa: E402
from _bench import describe, write_jpegs  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument('--gallery', type=common.positive_int, default=100_000)
parser.add_argument('--clients', type=common.positive_int, default=16, help='At most 64.')
parser.add_argument('--seconds', type=common.positive_float, default=60.0, help='At most 600.')
parser.add_argument('--add_every', type=common.positive_int, default=20,
                    help='Every N-th request of a client is an addition (default 20).')
parser.add_argument('--height', type=common.positive_int, default=128,
                    help='Net input height of the small_cnn (default 128).')
parser.add_argument('--width', type=common.positive_int, default=64)
parser.add_argument('--dim', type=common.positive_int, default=128)

# Run in a child process: an experiment root of small_cnn with random weights, and its export.
MAKE_EXPORT = '''
import json, sys
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
import export
from model import build_model
root, height, width, dim = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
args = {'model_name': 'small_cnn', 'head_name': 'fc1024', 'embedding_dim': dim,
        'net_input_height': height, 'net_input_width': width, 'metric': 'euclidean'}
tf.io.gfile.makedirs(root)
open(root + '/args.json', 'w').write(json.dumps(args))
model = build_model('small_cnn', 'fc1024', dim)
checkpoint = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64), model=model)
tf.train.CheckpointManager(checkpoint, root, 1, checkpoint_name='checkpoint').save(0)
export.write_onnx = lambda *args: False  # not needed for serving the SavedModel
export.main(['--experiment_root', root, '--output', root + '/export', '--quiet'])
'''


def post(port: int, path: str, fields: dict, files: list) -> int:
    body, content_type = service.encode_multipart(fields, files)
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    try:
        connection.request('POST', path, body=body, headers={'Content-Type': content_type})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def client(number: int, port: int, jpegs: list[bytes], deadline: float, add_every: int,
           out: dict) -> None:
    """One client's loop; appends (kind, seconds, ok) to out['calls'], names to out['added']."""
    count = 0
    while time.perf_counter() < deadline:
        count += 1
        data = jpegs[(number + count) % len(jpegs)]
        adding = count % add_every == 0
        name = f'load_{number}_{count}.jpg'
        start = time.perf_counter()
        try:
            if adding:
                status = post(port, '/gallery', {'identities': f'load-{number}-{count}'},
                              [('images', name, data)])
            else:
                status = post(port, '/search', {'top_k': '10'}, [('images', 'q.jpg', data)])
        except OSError:
            status = None
        seconds = time.perf_counter() - start
        with out['lock']:
            out['calls'].append(('gallery' if adding else 'search', seconds, status == 200))
            if adding and status == 200:
                out['added'].append(name)


def start_server(folder: Path) -> tuple[subprocess.Popen, int]:
    log = open(folder / 'server.log', 'w')
    process = subprocess.Popen(
        [sys.executable, str(ROOT / 'search.py'), 'serve', '--index', str(folder / 'index'),
         '--export', str(folder / 'experiment' / 'export'), '--host', '127.0.0.1',
         '--port', '0'], stdout=subprocess.PIPE, stderr=log, text=True)
    line = process.stdout.readline()
    if 'serving' not in line:
        process.kill()
        sys.exit(f'the server did not start: {(folder / "server.log").read_text()[-2000:]}')
    return process, int(line.strip().rsplit(':', 1)[1])


def summary(calls: list, seconds: float) -> None:
    for kind in ('search', 'gallery', 'all'):
        chosen = [c for c in calls if kind in ('all', c[0])]
        if not chosen:
            continue
        latencies = np.array([c[1] for c in chosen if c[2]]) * 1000
        failed = sum(not c[2] for c in chosen)
        p50, p99 = (np.percentile(latencies, [50, 99]) if len(latencies) else (np.nan, np.nan))
        print(f'{kind:8s} {len(chosen):7d} requests, {len(chosen) / seconds:7.1f} requests/s, '
              f'p50 {p50:7.1f} ms, p99 {p99:7.1f} ms, failed {failed}')


def main() -> None:
    args = parser.parse_args()
    if args.clients > 64 or args.seconds > 600:
        raise common.InputError('at most 64 --clients and 600 --seconds')
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, '-c', MAKE_EXPORT, str(ROOT), str(folder / 'experiment'),
                        str(args.height), str(args.width), str(args.dim)], check=True,
                       capture_output=True)
        rng = np.random.default_rng(0)
        embs = rng.standard_normal((args.gallery, args.dim), np.float32)
        common.save_embeddings(folder / 'gallery.h5', embs)
        (folder / 'gallery.csv').write_text(''.join(f'{i // 10},g/{i:07d}.jpg\n'
                                                    for i in range(args.gallery)))
        subprocess.run([sys.executable, str(ROOT / 'search.py'), 'index', '--embeddings',
                        str(folder / 'gallery.h5'), '--dataset', str(folder / 'gallery.csv'),
                        '--out', str(folder / 'index'), '--export',
                        str(folder / 'experiment' / 'export')], check=True, capture_output=True)
        jpegs = [Path(p).read_bytes() for p in write_jpegs(folder, 16, 128, 64)]
        process, port = start_server(folder)
        out = {'lock': threading.Lock(), 'calls': [], 'added': []}
        post(port, '/search', {}, [('images', 'warm.jpg', jpegs[0])])  # traces the model
        deadline = time.perf_counter() + args.seconds
        threads = [threading.Thread(target=client, args=(n, port, jpegs, deadline,
                                                         args.add_every, out))
                   for n in range(args.clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        connection = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
        connection.request('GET', '/stats')
        stats = json.loads(connection.getresponse().read())
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
        index = gallery.Gallery(folder / 'index')
        kept = set(index.fids[args.gallery:])
        print(f'{args.clients} clients for {elapsed:.1f} s against {args.gallery:,} entries '
              f'(small_cnn {args.height}x{args.width}, {args.dim}-D); {describe()}')
        summary(out['calls'], elapsed)
        print(f'additions: {len(out["added"])} acknowledged, gallery size during load '
              f'{stats["gallery_size"]:,} (expected {args.gallery + len(out["added"]):,}), '
              f'{len(set(out["added"]) & kept)} of them in the index folder after SIGTERM '
              f'(server exit code {code})')


if __name__ == '__main__':
    common.run(main)
