#!/usr/bin/env python3
"""Throughput of trinet_embed.py's network and preprocessing, on random weights.

Prints images/s (each image is 10 crops of 256x128) of the TriNet forward pass at
--batch_size images per step (the median of --steps timed steps after one warm-up), the
GFLOP/s that means, and the images/s of the OpenCV preprocessing (resize + 10 crops) of a
Market-1501-sized 128x64 image.

    python benchmarks/trinet_speed.py [--batch_size 8] [--steps 5]
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (needs the path above)
import trinet_embed  # noqa: E402
from _bench import describe  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument('--batch_size', type=common.positive_int, default=8,
                    help='images per step (x10 crops)')
parser.add_argument('--steps', type=common.positive_int, default=5, help='timed steps')


def forward_flops(model) -> float:
    """Multiply-adds x 2 of the convolutions and dense layers of one crop."""
    import keras
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            flops += 2 * h * w * c_out * kh * kw * c_in
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * np.prod(layer.kernel.shape)
    return float(flops)


def main() -> int:
    args = parser.parse_args()
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import tensorflow as tf

    rng = np.random.default_rng(0)
    weights = {name: rng.normal(0, 0.05, shape).astype(np.float32)
               for name, shape in trinet_embed.param_layout()}
    model = trinet_embed.build_model(weights)
    embed = tf.function(lambda crops: model(crops, training=False))

    # ------------------------------------------------------------------ network
    crops = rng.normal(0, 50, (10 * args.batch_size, 256, 128, 3)).astype(np.float32)
    embed(crops).numpy()  # trace and warm up
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        embed(crops).numpy()
        times.append(time.perf_counter() - start)
    step = float(np.median(times))
    machine = describe()
    gflop = forward_flops(model) / 1e9
    print(f'network: {args.batch_size / step:.2f} images/s ({10 * args.batch_size / step:.1f} '
          f'crops/s, {args.batch_size} images = {10 * args.batch_size} crops per step, median '
          f'of {args.steps} steps of {", ".join(f"{t:.2f}" for t in times)} s)  [{machine}]')
    print(f'         {gflop:.2f} GFLOP per crop -> '
          f'{10 * args.batch_size * gflop / step:.0f} GFLOP/s  [{machine}]')

    # ------------------------------------------------------------------ preprocessing
    image = rng.integers(0, 256, (128, 64, 3)).astype(np.uint8)
    start = time.perf_counter()
    count = 200
    for _ in range(count):
        trinet_embed.ten_crops(image)
    print(f'preprocessing: {count / (time.perf_counter() - start):.0f} images/s (resize + 10 crops '
          f'of a 128x64 image)  [{machine}]')
    return 0


if __name__ == '__main__':
    sys.exit(main())
