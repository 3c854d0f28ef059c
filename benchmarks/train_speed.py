"""Images/s of train.py's training step, and of its input pipeline, in one run each.

Default: replicas.make_train_step (batch-hard loss, soft margin, Adam with epsilon 1e-8) on the
same batch of P x K random images for two models. "ours" is
model.build_model('resnet_v1_50', 'fc1024'): slim's ResNet layout with the fused batch
norm. "plain" is keras.applications.ResNet50(weights=None, include_top=False,
pooling='avg') with the same fc1024 head built from Keras layers (Dense, keras
BatchNormalization, ReLU, Dense). Steps of the two alternate, so that load from other
processes hits both alike; the median step time of each is used.

--mixed_precision bfloat16 (or float16) compares instead our model (--model_name +
--head_name) in float32 against the same model built under that mixed-precision policy, as
train.py --mixed_precision builds it (float16 with its loss scaling), alternating in the same way.

--recipe times the strong baseline's head and losses against the 2017 ones on the same
backbone (--model_name, default resnet_v1_50, last stride 2 in both): "2017" is build_model(net,
'fc1024', 128) with the batch-hard soft-margin loss; "strong baseline" is build_model(net,
'bnneck', <its channels>, num_classes=751) with the batch-hard loss (margin 0.3) + the ID loss
with label smoothing 0.1 + the center loss 0.0005 (and its centres' update), as
market1501_bot_train.sh trains. It prints what the new parts cost per step.

--input_only times batches.make_dataset alone, the pipeline train.py feeds the step with (decode
JPEG, resize to the pre-crop size, random crop, random flip, PK batches), on JPEG files of
Market-1501's size (128x64) that it writes to a temporary folder, and reports images/s and
images per CPU-second: what one core delivers, and so how many cores a GPU at a given speed needs.

    python benchmarks/train_speed.py [--steps 3] [--batch_p 18 --batch_k 4] [--jit]
    python benchmarks/train_speed.py --mixed_precision bfloat16 [--model_name small_cnn]
    python benchmarks/train_speed.py --input_only [--batches 30]
    python benchmarks/train_speed.py --determinism
    python benchmarks/train_speed.py --recipe [--model_name small_cnn]

`--determinism` times what train.py --deterministic costs instead: the same step of "ours"
with TensorFlow's op determinism on and off, two copies of the model, alternating. The
switch is flipped before every step (TensorFlow's internal disable_op_determinism, the
counterpart of tf.config.experimental.enable_op_determinism, which has no public one).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (needs the path above)
from model import PRECISIONS, build_model, plugin_names  # noqa: E402
from _bench import describe, write_jpegs  # noqa: E402
import batches  # noqa: E402
import replicas  # noqa: E402

# Training throughputs to size the input pipeline for: fast-reid's reported ~258 images/s on one
# GPU, and this project's goal for one H100 (the TriNet schedule in under 15 minutes).
GPU_SPEEDS = {'fast-reid, one GPU': 258, 'goal, one H100': 2000}

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
parser.add_argument('--recipe', action='store_true',
                    help="time the strong baseline's BNNeck + ID + center loss against the 2017 "
                         'fc1024 head and triplet loss, on the same backbone')
parser.add_argument('--mixed_precision', choices=PRECISIONS[1:], default=None,
                    help='compare our model in float32 against it in this mixed precision')
parser.add_argument('--model_name', default='resnet_v1_50', choices=plugin_names('nets'),
                    help='with --mixed_precision or --recipe: the backbone')
parser.add_argument('--head_name', default='fc1024', choices=plugin_names('heads'),
                    help='with --mixed_precision: the head')
parser.add_argument('--input_only', action='store_true',
                    help="time train.py's input pipeline alone, no model")
parser.add_argument('--batches', type=common.positive_int, default=30,
                    help='with --input_only: timed batches, after a warm-up of 3')
parser.add_argument('--jpeg_height', type=common.positive_int, default=128,
                    help='with --input_only: height of the JPEG files (Market-1501: 128)')
parser.add_argument('--jpeg_width', type=common.positive_int, default=64,
                    help='with --input_only: width of the JPEG files (Market-1501: 64)')
parser.add_argument('--loading_threads', type=common.positive_int, default=None,
                    help='with --input_only: as train.py\'s flag; default: the cores of this '
                         'process')


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


def time_steps(args) -> None:
    """Times two models' training steps, alternating, and prints images/s and their ratio."""
    import keras
    import numpy as np
    import tensorflow as tf

    batch = args.batch_p * args.batch_k
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch, args.height, args.width, 3)), tf.float32)
    pids = tf.constant(np.repeat(np.arange(args.batch_p), args.batch_k), tf.int32)
    switch = {}  # a function to call before each step of a model, if it needs one
    losses = {}  # (margin, replicas.Extras) of a model, if not the 2017 loss
    if args.determinism:
        from tensorflow.python.framework import config
        models = {'ours, op determinism on': build_model('resnet_v1_50', 'fc1024', 128),
                  'ours, op determinism off': build_model('resnet_v1_50', 'fc1024', 128)}
        switch = {'ours, op determinism on': config.enable_op_determinism,
                  'ours, op determinism off': config.disable_op_determinism}
    elif args.recipe:
        old = build_model(args.model_name, 'fc1024', 128)
        models = {f'2017: {args.model_name} + fc1024, triplet': old}
        name = f'strong baseline: {args.model_name} + bnneck, triplet + ID + center'
        channels = old.output['model_output'].shape[-1]  # BNNeck on the pooled feature
        models[name] = build_model(args.model_name, 'bnneck', channels, num_classes=751)
        losses[name] = (0.3, replicas.Extras(id_weight=1.0, label_smoothing=0.1,
                                             center_weight=5e-4, center_lr=0.5,
                                             centres=replicas.make_centres(751, channels)))
    elif args.mixed_precision:
        net = f'{args.model_name} + {args.head_name}'
        models = {f'{net}, float32': build_model(args.model_name, args.head_name, 128),
                  f'{net}, {args.mixed_precision}': build_model(
                      args.model_name, args.head_name, 128, args.mixed_precision)}
    else:
        models = {'ours (resnet_v1_50 + fc1024, train.py)': build_model(
                      'resnet_v1_50', 'fc1024', 128),
                  'plain Keras 3 (applications.ResNet50)': plain_keras_model(args.height,
                                                                             args.width)}
    steps = {}
    for index, (name, model) in enumerate(models.items()):
        optimizer = keras.optimizers.Adam(learning_rate=3e-4, epsilon=1e-8)
        if index == 1 and args.mixed_precision == 'float16':  # as train.py does
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        margin, extras = losses.get(name, ('soft', replicas.NO_EXTRAS))
        steps[name] = replicas.make_train_step(model, optimizer, 'batch_hard', margin, 'euclidean',
                                               jit=args.jit, extras=extras)
    times = {name: [] for name in steps}
    for name, step in steps.items():
        switch.get(name, lambda: None)()
        step(images, pids)['loss'].numpy()  # warm-up: tracing and first allocations
    for _ in range(args.steps):
        for name, step in steps.items():
            switch.get(name, lambda: None)()
            start = time.perf_counter()
            step(images, pids)['loss'].numpy()
            times[name].append(time.perf_counter() - start)
    speed = {name: batch / np.median(t) for name, t in times.items()}
    machine = 'GPU' if tf.config.list_physical_devices('GPU') else describe()
    for name, images_per_s in speed.items():
        print(f'{name:42s} {images_per_s:6.2f} images/s  (steps: '
              f'{", ".join(f"{t:.2f}" for t in times[name])} s)  [{machine}]')
    first, second = speed.values()
    if args.determinism:
        label, ratio = 'deterministic / default', first / second
    elif args.recipe:
        label, ratio = 'strong baseline / 2017', second / first
        print(f'the strong baseline\'s head and losses cost {100 * (first / second - 1):+.1f}% '
              f'time per step  [{machine}]')
    elif args.mixed_precision:
        label, ratio = f'{args.mixed_precision} / float32', second / first
    else:
        label, ratio = 'ours / plain Keras', first / second
    print(f'ratio {label}: {ratio:.2f} '
          f'(P={args.batch_p} K={args.batch_k}, {args.height}x{args.width}, batch_hard soft, '
          f'Adam{", XLA" if args.jit else ""})  [{machine}]')


def time_input(args) -> None:
    """Times batches.make_dataset on JPEG files and prints images/s and images per CPU-second."""
    import numpy as np
    cores = len(os.sched_getaffinity(0))
    batch = args.batch_p * args.batch_k
    # Each identity has 2 K images, as Market-1501's training set averages 17 images per
    # identity with K=4: sampling without replacement, as in a real run.
    identities = max(args.batch_p, 2)
    settings = argparse.Namespace(
        batch_p=args.batch_p, batch_k=args.batch_k, net_input_height=args.height,
        net_input_width=args.width, pre_crop_height=args.height * 9 // 8,
        pre_crop_width=args.width * 9 // 8, crop_augment=True, flip_augment=True,
        loading_threads=args.loading_threads or cores, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        paths = np.array(write_jpegs(Path(folder), identities * 2 * args.batch_k,
                                     args.jpeg_height, args.jpeg_width))
        labels = np.arange(len(paths), dtype=np.int32) % identities
        stream = iter(batches.make_dataset(paths, labels, settings, 0))
        for _ in range(3):  # warm-up: tracing, thread pools, the first prefetches
            next(stream)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(args.batches):
            images, _, _ = next(stream)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    assert images.shape == (batch, args.height, args.width, 3), images.shape
    count = args.batches * batch
    per_core = count / cpu
    machine = describe()
    print(f'input pipeline: {args.jpeg_height}x{args.jpeg_width} JPEG -> resize '
          f'{settings.pre_crop_height}x{settings.pre_crop_width} -> crop {args.height}x'
          f'{args.width} -> flip -> PK batches of {args.batch_p}x{args.batch_k}, '
          f'{settings.loading_threads} loading threads, {count} images  [{machine}]')
    print(f'input pipeline: {count / seconds:.0f} images/s on {cores} cores, {per_core:.0f} '
          f'images per CPU-second (= per fully used core; {1e3 / per_core:.2f} CPU ms/image)  '
          f'[{machine}]')
    for name, speed in GPU_SPEEDS.items():
        print(f'  cores to feed {speed:,} images/s ({name}): {speed / per_core:.2f}')


def main():
    args = parser.parse_args()
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    if args.input_only:
        time_input(args)
    else:
        time_steps(args)

if __name__ == '__main__':
    common.run(main)
