#!/usr/bin/env python3
"""Times embed.py's pipeline (JPEG files -> decode -> resize -> model) against the bare model.

    python benchmarks/embed_speed.py [--images 256] [--batch_size 64] [--model_name resnet_v1_50]

Writes JPEG files to a temporary folder, then alternates, in this one run, embed's
compute_embeddings on those files with the same traced forward pass called on one in-memory
batch as often. Both see the same number of images. The target is a pipeline within 10% of the
bare model: on a CPU, decoding must hide behind the forward pass.

Each is reported by its fastest round, as timeit does: on a shared machine the slower rounds
are those another process interfered with. The process's CPU time per image (median) is printed
too, as it hardly depends on other processes.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
from model import build_model  # noqa: E402
import embed  # noqa: E402
from _bench import add_model_flags, describe  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
add_model_flags(parser, batch_size=64)  # the JPEG files have the net's input size
parser.add_argument('--images', type=common.positive_int, default=128,
                    help='Images per timed run (rounded up to whole batches).')
parser.add_argument('--rounds', type=common.positive_int, default=7,
                    help='Alternating timed runs of each; the fastest is reported.')


def main():
    args = parser.parse_args()
    import cv2
    import tensorflow as tf

    size = (args.height, args.width)
    count = -(-args.images // args.batch_size) * args.batch_size
    rng = np.random.default_rng(0)
    model = build_model(args.model_name, args.head_name, args.embedding_dim)
    forward = embed.forward_pass(model)
    batch = tf.constant(rng.uniform(0, 255, (args.batch_size, *size, 3)).astype(np.float32))

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(count):
            # Smooth content compresses like photos do, unlike uniform noise.
            small = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
            pixels = cv2.resize(small, (args.width, args.height), interpolation=cv2.INTER_CUBIC)
            paths.append(str(Path(folder) / f'{i:05d}.jpg'))
            cv2.imwrite(paths[-1], pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])

        def pipeline():
            embed.compute_embeddings(model, paths, size, size, False, None, args.batch_size,
                                     forward=forward)

        def bare():
            for _ in range(count // args.batch_size):
                forward(batch).numpy()

        pipeline()  # warm-up: traces the forward pass, starts tf.data's threads
        bare()
        times = {'pipeline': [], 'bare': []}
        cpu = {'pipeline': [], 'bare': []}
        for _ in range(args.rounds):
            for name, run in (('pipeline', pipeline), ('bare', bare)):
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)

    print(f'{args.model_name} + {args.head_name}, {size[0]}x{size[1]} JPEG files, batch '
          f'{args.batch_size}, {count} images per run, {args.rounds} rounds, '
          f'{tf.config.threading.get_intra_op_parallelism_threads() or "all"} intra-op threads')
    speed, machine = {}, describe()
    for name, label in (('pipeline', 'embed pipeline (files -> embeddings)'),
                        ('bare', 'bare forward pass (in-memory batch)')):
        speed[name] = count / min(times[name])
        rounds = ', '.join(f'{count / t:.1f}' for t in times[name])
        cpu_ms = 1000 * statistics.median(cpu[name]) / count
        print(f'{label:38s} {speed[name]:7.1f} images/s, {cpu_ms:6.1f} CPU ms/image  '
              f'(rounds: {rounds})  [{machine}]')
    ratio = speed['pipeline'] / speed['bare']
    cpu_ratio = statistics.median(cpu['bare']) / statistics.median(cpu['pipeline'])
    print(f'pipeline / bare throughput = {ratio:.3f} (target >= 0.90: '
          f'{"met" if ratio >= 0.9 else "MISSED"}); by CPU time = {cpu_ratio:.3f}  [{machine}]')


if __name__ == '__main__':
    main()
