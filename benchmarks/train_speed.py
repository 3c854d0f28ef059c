"""Images/s of train.py's training step vs the same step on a plain Keras 3 model, in one run.

Both steps come from train.make_train_step (batch-hard loss, soft margin, Adam with
epsilon 1e-8) on the same batch of P x K random images. "ours" is
model.build_model('resnet_v1_50', 'fc1024'): slim's ResNet layout with the fused batch
norm. "plain" is keras.applications.ResNet50(weights=None, include_top=False,
pooling='avg') with the same fc1024 head built from Keras layers (Dense, keras
BatchNormalization, ReLU, Dense). Steps of the two alternate, so that load from other
processes hits both alike; the median step time of each is used.

    python benchmarks/train_speed.py [--steps 3] [--batch_p 18 --batch_k 4] [--jit]
    python benchmarks/train_speed.py --determinism

`--determinism` times what train.py --deterministic costs instead: the same step of "ours"
with TensorFlow's op determinism on and off, two copies of the model, alternating. The
switch is flipped before every step (TensorFlow's internal disable_op_determinism, the
counterpart of tf.config.experimental.enable_op_determinism, which has no public one).
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (needs the path above)
from model import build_model  # noqa: E402
from _bench import describe  # noqa: E402
import train  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--steps', type=common.positive_int, default=3,
                    help='timed steps per model, after one warm-up step')
parser.add_argument('--batch_p', type=common.positive_int, default=18, help='identities per batch')
parser.add_argument('--batch_k', type=common.positive_int, default=4, help='images per identity')
parser.add_argument('--height', type=common.positive_int, default=256, help='input height, pixels')
parser.add_argument('--width', type=common.positive_int, default=128, help='input width, pixels')
parser.add_argument('--jit', action='store_true', help='compile both steps with XLA')
parser.add_argument('--determinism', action='store_true',
                    help='time ours with op determinism on vs off, instead of vs plain Keras')


def plain_keras_model(height: int, width: int, embedding_dim: int = 128):
    """keras.applications.ResNet50 + the fc1024 head in plain Keras layers; returns {'emb'}."""
    import keras
    images = keras.Input((height, width, 3))
    features = keras.applications.ResNet50(weights=None, include_top=False, pooling='avg',
                                           input_shape=(height, width, 3))(images)
    hidden = keras.layers.Dense(1024)(features)
    hidden = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(hidden)
    hidden = keras.layers.ReLU()(hidden)
    emb = keras.layers.Dense(embedding_dim, kernel_initializer='orthogonal')(hidden)
    return keras.Model(images, {'emb': emb})


def main():
    args = parser.parse_args()
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import keras
    import numpy as np
    import tensorflow as tf

    batch = args.batch_p * args.batch_k
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch, args.height, args.width, 3)), tf.float32)
    pids = tf.constant(np.repeat(np.arange(args.batch_p), args.batch_k), tf.int32)
    if args.determinism:
        from tensorflow.python.framework import config
        models = {'ours, op determinism on': build_model('resnet_v1_50', 'fc1024', 128),
                  'ours, op determinism off': build_model('resnet_v1_50', 'fc1024', 128)}
        switch = {'ours, op determinism on': config.enable_op_determinism,
                  'ours, op determinism off': config.disable_op_determinism}
    else:
        models = {'ours (resnet_v1_50 + fc1024, train.py)': build_model(
                      'resnet_v1_50', 'fc1024', 128),
                  'plain Keras 3 (applications.ResNet50)': plain_keras_model(args.height,
                                                                             args.width)}
        switch = {name: lambda: None for name in models}
    steps = {}
    for name, model in models.items():
        optimizer = keras.optimizers.Adam(learning_rate=3e-4, epsilon=1e-8)
        optimizer.build(model.trainable_variables)
        steps[name] = train.make_train_step(model, optimizer, 'batch_hard', 'soft', 'euclidean',
                                            jit=args.jit)
    times = {name: [] for name in steps}
    for name, step in steps.items():
        switch[name]()
        step(images, pids)['loss'].numpy()  # warm-up: tracing and first allocations
    for _ in range(args.steps):
        for name, step in steps.items():
            switch[name]()
            start = time.perf_counter()
            step(images, pids)['loss'].numpy()
            times[name].append(time.perf_counter() - start)
    speed = {name: batch / np.median(t) for name, t in times.items()}
    machine = 'GPU' if tf.config.list_physical_devices('GPU') else describe()
    for name, images_per_s in speed.items():
        print(f'{name:42s} {images_per_s:6.2f} images/s  (steps: '
              f'{", ".join(f"{t:.2f}" for t in times[name])} s)  [{machine}]')
    first, second = speed.values()
    print(f'ratio {"deterministic / default" if args.determinism else "ours / plain Keras"}: '
          f'{first / second:.2f} (P={args.batch_p} K={args.batch_k}, '
          f'{args.height}x{args.width}, batch_hard soft, Adam{", XLA" if args.jit else ""})  '
          f'[{machine}]')

if __name__ == '__main__':
    common.run(main)
