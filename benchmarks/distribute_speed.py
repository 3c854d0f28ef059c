"""Seconds per training step of train.py's step under MirroredStrategy with and without
synchronised batch norm (--sync_batch_norm), and on one device, in one run.

On a machine without GPUs the CPU is split into --replicas logical devices (they share the
same cores, so this shows what synchronisation adds: the all-reduce of every batch-norm
layer's sums, forward and backward, not what several GPUs gain). Steps of the three
alternate, so that load from other processes hits them alike; the median of each is used.

    python benchmarks/distribute_speed.py [--model_name resnet_v1_50 --batch_p 18 --batch_k 4]
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (needs the path above)
from _bench import describe  # noqa: E402
from model import build_model, plugin_names  # noqa: E402
import replicas  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--model_name', default='resnet_v1_50', choices=plugin_names('nets'),
                    help='backbone (head fc1024, 128-D)')
parser.add_argument('--steps', type=common.positive_int, default=3,
                    help='timed steps per variant, after one warm-up step')
parser.add_argument('--replicas', type=common.positive_int, default=2,
                    help='logical CPU devices to split the batch over (when there is no GPU)')
parser.add_argument('--batch_p', type=common.positive_int, default=18, help='identities per batch')
parser.add_argument('--batch_k', type=common.positive_int, default=4, help='images per identity')
parser.add_argument('--height', type=common.positive_int, default=256, help='input height, pixels')
parser.add_argument('--width', type=common.positive_int, default=128, help='input width, pixels')


def main():
    args = parser.parse_args()
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import keras
    import numpy as np
    import tensorflow as tf

    gpus = tf.config.list_physical_devices('GPU')
    if not gpus:  # before TensorFlow initialises its devices
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas)
    strategy = replicas.make_strategy(argparse.Namespace(distribute='mirrored'), [])
    batch = args.batch_p * args.batch_k
    if batch % strategy.num_replicas_in_sync:
        raise common.InputError(f'P x K = {batch} does not split over '
                                f'{strategy.num_replicas_in_sync} replicas')
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch, args.height, args.width, 3)), tf.float32)
    pids = tf.constant(np.repeat(np.arange(args.batch_p), args.batch_k), tf.int32)

    steps = {}
    for name, sync, under in (('one device', False, None), ('mirrored, sync BN', True, strategy),
                              ('mirrored, no sync', False, strategy)):
        keras.utils.set_random_seed(0)
        with under.scope() if under else tf.name_scope('one'):
            model = build_model(args.model_name, 'fc1024', 128)
            for layer in model.layers:
                if hasattr(layer, 'synchronized'):
                    layer.synchronized = sync
            optimizer = keras.optimizers.Adam(learning_rate=3e-4, epsilon=1e-8)
            optimizer.build(model.trainable_variables)
        steps[name] = replicas.make_train_step(model, optimizer, 'batch_hard', 'soft', 'euclidean',
                                            strategy=under)
    times = {name: [] for name in steps}
    for step in steps.values():
        step(images, pids)['loss'].numpy()  # warm-up: tracing and first allocations
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step(images, pids)['loss'].numpy()
            times[name].append(time.perf_counter() - start)
    machine = (f'{len(gpus)} GPUs' if gpus else
               f'{describe()}, split into {args.replicas} logical devices')
    seconds = {name: float(np.median(t)) for name, t in times.items()}
    for name, median in seconds.items():
        print(f'{name:20s} {median:7.3f} s/step  (steps: '
              f'{", ".join(f"{t:.3f}" for t in times[name])})  [{machine}]')
    print(f'sync / no sync: {seconds["mirrored, sync BN"] / seconds["mirrored, no sync"]:.2f}; '
          f'sync / one device: {seconds["mirrored, sync BN"] / seconds["one device"]:.2f} '
          f'({args.model_name} + fc1024, P={args.batch_p} K={args.batch_k}, '
          f'{args.height}x{args.width}, {strategy.num_replicas_in_sync} replicas)  [{machine}]')


if __name__ == '__main__':
    common.run(main)
