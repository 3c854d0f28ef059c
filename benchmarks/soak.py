#!/usr/bin/env python3
"""A long train.py run stays flat: resident memory at the start and the end, and the size of the
experiment root with old checkpoints pruned.

    python benchmarks/soak.py [--iterations 2000] [--checkpoint_frequency 100] \
        [--keep_checkpoints 3]

Runs the real train.py in a subprocess (small_cnn on tiny synthetic images) and samples its
resident memory (VmRSS in /proc, Linux) while following its log. The start is the first
sample after iteration --warmup, once tracing, the input pipeline and the first checkpoint have
allocated what they keep; the end is the last sample before it exits. A leak (summaries,
datasets, checkpoint managers, retraced functions) shows as growth that goes with the number of
iterations; the aim is under 5% over 2,000 iterations.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
from _bench import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--iterations', type=common.positive_int, default=2000,
                    help='training iterations')
parser.add_argument('--checkpoint_frequency', type=common.positive_int, default=100,
                    help='iterations between checkpoints')
parser.add_argument('--keep_checkpoints', type=common.positive_int, default=3,
                    help="train.py's --keep_checkpoints")
parser.add_argument('--warmup', type=common.positive_int, default=200,
                    help='the iteration after which memory is first sampled')
parser.add_argument('--height', type=common.positive_int, default=32, help='net input height')
parser.add_argument('--width', type=common.positive_int, default=16, help='net input width')
parser.add_argument('--identities', type=common.positive_int, default=20,
                    help='identities of the synthetic training set (5 images each)')
parser.add_argument('--experiment_root', default=None,
                    help='where to train (must not exist); default: a temporary folder, removed')


def write_images(folder: Path, identities: int, height: int, width: int) -> Path:
    """Noisy two-colour people, 5 per identity, as JPEG files; returns the training CSV."""
    import cv2
    rng = np.random.default_rng(0)
    lines = []
    for pid in range(identities):
        colours = rng.integers(0, 256, (2, 1, 1, 3))
        for index in range(5):
            image = np.concatenate([np.broadcast_to(c, (height // 2, width, 3)) for c in colours])
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            fid = f'{pid:04d}_c1s1_{index:06d}_00.jpg'
            cv2.imwrite(str(folder / fid), image)
            lines.append(f'{pid},{fid}\n')
    csv = folder / 'train.csv'
    csv.write_text(''.join(lines))
    return csv


def resident_mib(pid: int) -> float | None:
    """The process's resident memory in MiB, None once it is gone."""
    try:
        status = Path(f'/proc/{pid}/status').read_text()
    except OSError:
        return None
    match = re.search(r'VmRSS:\s+(\d+) kB', status)
    return int(match[1]) / 1024 if match else None


def soak(args: argparse.Namespace, root: Path, data: Path) -> list[tuple[int, float]]:
    """Trains in `root`; returns (iterations done, resident MiB) samples, 10 per second."""
    csv = write_images(data, args.identities, 2 * args.height, 2 * args.width)
    log_file = data / 'stderr.txt'
    flags = ['--train_set', csv, '--image_root', data, '--experiment_root', root,
             '--model_name', 'small_cnn', '--head_name', 'fc1024', '--embedding_dim', '16',
             '--net_input_height', args.height, '--net_input_width', args.width,
             '--batch_p', '4', '--batch_k', '4', '--loading_threads', '2', '--seed', '0',
             '--train_iterations', args.iterations, '--decay_start_iteration',
             args.iterations // 2, '--checkpoint_frequency', args.checkpoint_frequency,
             '--keep_checkpoints', args.keep_checkpoints, '--crop_augment', '--flip_augment',
             '--pre_crop_height', args.height + args.height // 8,
             '--pre_crop_width', args.width + args.width // 8]
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
    with open(log_file, 'w') as stderr:
        process = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *map(str, flags)],
                                   stderr=stderr, env=env)
    samples = []
    while process.poll() is None:
        done = re.findall(r'iter (\d+)/', log_file.read_text())
        rss = resident_mib(process.pid)
        if done and rss is not None:
            samples.append((int(done[-1]), rss))
        time.sleep(0.1)
    if process.returncode != 0:
        raise common.InputError(f'train.py failed: {log_file.read_text()[-2000:]}')
    return samples


def main():
    args = parser.parse_args()
    if args.warmup >= args.iterations:
        raise common.InputError(f'--warmup {args.warmup} must be below --iterations')
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.experiment_root or Path(scratch) / 'experiment')
        data = Path(scratch) / 'images'
        data.mkdir()
        samples = soak(args, root, data)
        checkpoints = list(root.glob('checkpoint-*'))
        steps = sorted({int(re.search(r'checkpoint-(\d+)', p.name)[1]) for p in checkpoints})
        checkpoint_mib = sum(p.stat().st_size for p in checkpoints) / 2**20
        root_mib = sum(p.stat().st_size for p in root.rglob('*') if p.is_file()) / 2**20
    after = [rss for done, rss in samples if done >= args.warmup]
    if not after:
        raise common.InputError(f'no memory sample after iteration {args.warmup}: too short')
    start, end, peak = after[0], after[-1], max(rss for _, rss in samples)
    growth = 100 * (end - start) / start
    print(f'{args.iterations} iterations of small_cnn + fc1024 at {args.height}x{args.width}, '
          f'P=4 K=4, a checkpoint every {args.checkpoint_frequency}, keeping '
          f'{args.keep_checkpoints}: {time.time() - started:.0f} s  [{describe()}]')
    print(f'resident memory: start {start:.0f} MiB (iteration {args.warmup}), end {end:.0f} MiB '
          f'(growth {growth:+.1f}%, {"within" if growth < 5 else "OVER"} the 5% aim), '
          f'peak {peak:.0f} MiB')
    print(f'experiment root: {root_mib:.2f} MiB, of which checkpoints {checkpoint_mib:.2f} MiB '
          f'(steps {", ".join(map(str, steps))})')


if __name__ == '__main__':
    common.run(main)
