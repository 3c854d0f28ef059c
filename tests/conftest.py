"""Makes the top-level modules importable and keeps TensorFlow quiet and on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / 'shared' / 'data'

# ----------------------------------------------------------------------------- float32 tolerances
# float32's unit roundoff: the largest relative error of one rounding.
U32 = 2.0 ** -24
# Probabilistic rounding-error analysis (Higham and Mary, SIAM J. Sci. Comput. 41(5), 2019): a
# float32 dot product of length n is off by at most LAMBDA * sqrt(n) * u relative to sum |x w|,
# except with probability 2 exp(-LAMBDA**2 / 2), 3e-8 for 6: negligible over a test's dot products.
LAMBDA = 6


def float32_tolerance(model) -> float:
    """How far two float32 evaluations of `model` may differ, relative to its largest output.

    Two evaluations that use other kernels (another batch size, graph or eager, AVX-512 or AVX2
    oneDNN kernels) sum each dot product in another order. A layer whose dot products have length
    n (kernel height x width x input channels; a depthwise conv's height x width) is off by at most
    LAMBDA sqrt(n) u; batch norm brings each layer back to unit scale, so a relative error passes
    to the next layer about unchanged and the layers' errors add up. Two evaluations can each be
    off by that sum: the bound is twice it. (ResNet-50: 1.1e-3, ResNet-101: 2.3e-3. Measured
    between batch sizes 1 and 7, graph and eager, AVX-512 and AVX2 kernels: at most 6e-5 for
    ResNet-50 and 3.2e-4 for ResNet-101, 7x below.) Compare against a float64 reference with
    half of it.
    """
    total = 0.0
    for layer in model.layers:
        kernel = getattr(layer, 'kernel', None)
        if kernel is None or len(kernel.shape) < 2:
            continue
        depthwise = type(layer).__name__ == 'DepthwiseConv2D'
        fan_in = np.prod(kernel.shape[:2] if depthwise else kernel.shape[:-1])
        total += np.sqrt(fan_in)
    assert total > 0, f'{model.name} has no layer with a kernel: no bound'
    return 2 * LAMBDA * U32 * total


def assert_close_float32(got, want, model, reference_float64: bool = False) -> None:
    """`got` equals `want` up to float32 rounding of `model` (see float32_tolerance)."""
    got, want = np.asarray(got), np.asarray(want)
    tolerance = float32_tolerance(model) / (2 if reference_float64 else 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max())


# ----------------------------------------------------------------------------- tiny experiments
# The experiment root that the embed and export tests write: net, head, sizes.
TINY_NET, TINY_HEAD, TINY_DIM = 'mobilenet_v1_0_25', 'fc1024', 8
TINY_NET_SIZE, TINY_PRE_CROP = (32, 16), (40, 20)


def write_smooth_images(root: Path, fids: list[str], sizes: list[tuple[int, int]],
                        seed: int = 0) -> None:
    """JPEG, PNG and greyscale PNG files (by the name's ending) of the given (h, w) sizes.

    Smooth images, so that resizing and cropping make visible, not noise-like, changes.
    """
    import cv2
    rng = np.random.default_rng(seed)
    for fid, (h, w) in zip(fids, sizes, strict=True):
        small = rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)
        pixels = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        (root / fid).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / fid), pixels[..., 0] if fid.endswith('grey.png') else pixels)


def write_dataset(root, n_ids, per_id, noise, seed=0, size=(64, 32)):
    """Identities as two random colours (top and bottom half) plus pixel noise; returns the CSV.

    Identity 0 has only 2 images (fewer than K) and one image is a greyscale PNG.
    """
    import cv2
    rng = np.random.default_rng(seed)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    lines = []
    for pid in range(n_ids):
        top, bottom = rng.integers(0, 256, (2, 3))
        for index in range(2 if pid == 0 else per_id):
            image = np.empty((*size, 3))
            image[:size[0] // 2], image[size[0] // 2:] = top, bottom
            image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
            fid = f'images/{pid:04d}_c{index % 3 + 1}s1_{index:06d}.jpg'
            if pid == 1 and index == 0:
                fid = fid.replace('.jpg', '.png')
                image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            else:
                image = image[..., ::-1]  # OpenCV writes BGR
            assert cv2.imwrite(str(root / fid), image)
            lines.append(f'person{pid},{fid}')
    csv = root / 'train.csv'
    csv.write_text('\n'.join(lines) + '\n')
    return csv


def randomize(model, seed: int, size: tuple[int, int] = TINY_NET_SIZE) -> None:
    """Weights as after training: each image gets its own embedding, and a checkpoint not loaded
    shows.

    With freshly initialised batch norm statistics (mean 0, variance 1) the activations of a deep
    net explode or saturate, and every image gets the same embedding: a test comparing them
    would prove nothing. So the statistics are those of random images, as training stores them:
    one training-mode pass with the moving averages told to take the batch's values.
    """
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        name = variable.path.split('/')[-1]
        if name == 'gamma':
            variable.assign(rng.uniform(0.5, 1.5, variable.shape))
        elif name in ('beta', 'bias'):
            variable.assign(rng.normal(0.0, 0.2, variable.shape))
    norms = [layer for layer in model.layers if hasattr(layer, 'moving_mean')]
    # layers.BatchNorm keeps `decay`, Keras' BatchNormalization `momentum`: 0 = take the batch's.
    kept = [(layer, attr, getattr(layer, attr)) for layer in norms
            for attr in ('decay', 'momentum') if hasattr(layer, attr)]
    for layer, attr, _ in kept:
        setattr(layer, attr, 0.0)
    small = rng.integers(0, 256, (16, 4, 3, 3)).astype(np.float32)
    model(tf.image.resize(small, size), training=True)
    for layer, attr, value in kept:
        setattr(layer, attr, value)


def tf2_experiment(root: Path, images_at: Path, net: str = TINY_NET, head: str = TINY_HEAD,
                   steps: tuple[int, ...] = (0,), model=None, **settings) -> dict:
    """Writes args.json and train.py-style checkpoints; returns {step: model weights}.

    The checkpoints hold the optimizer's slots for the tiny net only: for the big nets they
    would triple the file, and that embed.py skips them is shown once.
    """
    import keras
    import tensorflow as tf

    from model import build_model
    args = {'model_name': net, 'head_name': head, 'embedding_dim': TINY_DIM,
            'net_input_height': TINY_NET_SIZE[0], 'net_input_width': TINY_NET_SIZE[1],
            'pre_crop_height': TINY_PRE_CROP[0], 'pre_crop_width': TINY_PRE_CROP[1],
            'image_root': str(images_at), 'flip_augment': False, 'crop_augment': False,
            'batch_p': 2, 'batch_k': 2, 'learning_rate': 3e-4, **settings}
    root.mkdir(parents=True, exist_ok=True)
    (root / 'args.json').write_text(json.dumps(args, sort_keys=True, indent=2))
    if model is None:
        keras.utils.set_random_seed(0)
        model = build_model(net, head, TINY_DIM)
    ckpt = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64), model=model)
    if net == TINY_NET:
        ckpt.optimizer = keras.optimizers.Adam()
        ckpt.optimizer.build(model.trainable_variables)
    manager = tf.train.CheckpointManager(ckpt, str(root), max_to_keep=None,
                                         checkpoint_name='checkpoint')
    weights = {}
    for step in steps:
        randomize(model, seed=step)
        ckpt.step.assign(step)
        manager.save(checkpoint_number=step)
        weights[step] = model.get_weights()
    return weights


def read_h5(path: Path) -> dict:
    """Every dataset of an HDF5 file, `augmentation_types` decoded to str."""
    import h5py
    with h5py.File(path, 'r') as f:
        out = {name: f[name][()] for name in f}
    if 'augmentation_types' in out:
        out['augmentation_types'] = [s.decode() for s in out['augmentation_types']]
    return out


def slim_names(model) -> dict:
    """Our Keras variables under the slim names the 2017 TensorFlow 1 code gave them."""
    import keras
    rename = {'kernel': 'weights', 'bias': 'biases'}
    names = {}
    for layer in model.layers:
        for variable in layer.weights:
            name = variable.path.split('/')[-1]
            if isinstance(layer, keras.layers.DepthwiseConv2D) and name == 'kernel':
                name = 'depthwise_weights'
            names[layer.name.replace('.', '/') + '/' + rename.get(name, name)] = variable.numpy()
    return names


# ----------------------------------------------------------------------------- failing writes
def file_size_limit(limit: int):
    """A preexec_fn: files cannot grow beyond `limit` bytes, also for root (unlike chmod);
    with SIGXFSZ ignored, a write beyond fails with EFBIG as on a full disk."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_read_only(folder: Path, command: list, **kwargs) -> subprocess.CompletedProcess:
    """Runs `command` with `folder` read-only for it; kwargs go to subprocess.run.

    Permissions do not stop root, so as root the folder becomes a read-only bind mount in a
    user and mount namespace of the command's own (`unshare -rm`, as a container can do it
    without privileges); where that is not allowed the test skips, saying why. Other users get
    the folder chmod 555 for the run.
    """
    command = [str(part) for part in command]
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            return subprocess.run(command, **kwargs)
        finally:
            folder.chmod(mode)
    probe = subprocess.run(['unshare', '-rm', 'true'], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f'running as root and `unshare -rm` is not allowed here ({probe.stderr}), '
                    'so no folder can be made read-only')
    remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return subprocess.run(['unshare', '-rm', 'sh', '-c', remount, str(folder), *command],
                          **kwargs)


def assert_refused_and_kept(result: subprocess.CompletedProcess, script: str, path: Path,
                            before: bytes, why: str) -> None:
    """A failed write: exit 2, one line naming the file and the reason, the old file intact."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f'{script}: error: cannot write '), result.stderr
    assert str(path.name) in lines[-1] and why in lines[-1], lines[-1]
    assert 'Traceback' not in result.stderr
    assert path.read_bytes() == before
    assert not list(path.parent.glob(f'{path.name}.tmp*'))


# ----------------------------------------------------------------------------- file writers
def _write_tf1_checkpoint(prefix, values: dict, version: str = 'V2',
                          global_step: int | None = None) -> str:
    """Saves {slim name: array} as TF1 variables with tf.compat.v1.train.Saver, as TF-slim and
    the 2017 code did: `V1` is the old single-file format of slim's published ImageNet
    checkpoints, `V2` (.index + .data) that of 2017 experiment roots. Returns the saved path."""
    import tensorflow as tf
    values = dict(values)
    if global_step is not None:
        values['global_step'] = np.int64(global_step)
    with tf.Graph().as_default():
        # Fed, not constants: a ResNet's weights as constants make a slow 100+ MB graph.
        feeds = {name: tf.compat.v1.placeholder(np.asarray(value).dtype, np.shape(value))
                 for name, value in values.items()}
        variables = [tf.compat.v1.Variable(feed, name=name) for name, feed in feeds.items()]
        saver = tf.compat.v1.train.Saver(
            variables, write_version=getattr(tf.compat.v1.train.SaverDef, version))
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer(),
                        {feeds[name]: value for name, value in values.items()})
            return saver.save(session, str(prefix), write_meta_graph=False)


@pytest.fixture(scope='session')
def write_tf1_checkpoint():
    """The function that writes TF1 checkpoints in slim's and the 2017 code's formats."""
    return _write_tf1_checkpoint


# The files that take longest, longest first (pytest --durations on 2 cores). With
# --dist loadfile each worker gets two files at first, then one per file it finishes: starting
# with these keeps both workers busy to the end instead of one running the README's commands
# alone.
LONGEST_FILES = ('test_readme.py', 'test_train.py', 'test_demo.py', 'test_benchmarks.py',
                 'test_replicas.py', 'test_strong_baseline.py', 'test_fuzz.py',
                 'test_mixed_precision.py')


def pytest_collection_modifyitems(items) -> None:
    """The longest files first, then slow tests first: with two workers, the long runs then
    overlap the many short tests instead of trailing after them."""
    def order(item) -> tuple[int, bool]:
        name = item.path.name
        rank = LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
        return rank, item.get_closest_marker('slow') is None
    items.sort(key=order)  # stable


def pytest_terminal_summary(terminalreporter) -> None:
    """Prints what tests reported with record_property('fuzz', ...): the fuzz test's cases."""
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, 'when', None) == 'call'
             for name, value in getattr(report, 'user_properties', ()) if name == 'fuzz']
    if lines:
        terminalreporter.write_sep('-', 'fuzz cases')
        for line in lines:
            terminalreporter.write_line(line)
