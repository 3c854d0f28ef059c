"""Training-step speed of our ResNet-50 (fused batch norm, slim layout) vs a plain Keras 3 one.

Prints images/s of one forward+backward+Adam step of nets/resnet_v1_50.py and of
keras.applications.ResNet50(weights=None) (Keras BatchNormalization, conv biases), both at
batch 72 (P=18 x K=4) and 256x128, and their ratio. Steps of the two models alternate, so that
load from other processes hits both alike; the median step time of each is used.

    python benchmarks/net_speed.py [--steps 4] [--batch 72]
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (needs the path above)

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--steps', type=int, default=4, help='timed steps per model (after 1 warm-up)')
parser.add_argument('--batch', type=int, default=72, help='images per step')
parser.add_argument('--height', type=int, default=256, help='input height in pixels')
parser.add_argument('--width', type=int, default=128, help='input width in pixels')


def make_step(model, optimizer):
    import tensorflow as tf

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            features = model(images, training=True)
            if isinstance(features, dict):
                features = features['model_output']
            loss = tf.reduce_mean(tf.square(features))  # any scalar: we time the step, not the loss
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss
    return step


def main():
    args = parser.parse_args()
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import keras
    import numpy as np

    from nets import resnet_v1_50

    images_in = keras.Input((args.height, args.width, 3))
    ours = keras.Model(images_in, resnet_v1_50.endpoints(images_in))
    plain = keras.applications.ResNet50(weights=None, include_top=False, pooling='avg',
                                        input_shape=(args.height, args.width, 3))
    images = np.random.RandomState(0).uniform(
        0, 255, (args.batch, args.height, args.width, 3)).astype(np.float32)
    steps = {'ours (nets.resnet_v1_50, common.BatchNorm)': make_step(ours, keras.optimizers.Adam()),
             'plain Keras (applications.ResNet50)': make_step(plain, keras.optimizers.Adam())}
    times = {name: [] for name in steps}
    for step in steps.values():
        step(images).numpy()  # warm-up: tracing and first-run allocations
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step(images).numpy()
            times[name].append(time.perf_counter() - start)
    speed = {name: args.batch / np.median(t) for name, t in times.items()}
    for name, images_per_s in speed.items():
        print(f'{name:45s} {images_per_s:6.2f} images/s  (steps: '
              f'{", ".join(f"{t:.2f}" for t in times[name])} s)')
    ours_speed, plain_speed = speed.values()
    print(f'ratio ours / plain Keras: {ours_speed / plain_speed:.2f} '
          f'(batch {args.batch}, {args.height}x{args.width}, forward+backward+Adam)')


if __name__ == '__main__':
    common.run(main)
