"""Makes the top-level modules importable and keeps TensorFlow quiet and on the CPU."""
import os
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


def pytest_collection_modifyitems(items) -> None:
    """Slow tests first: with two workers, the long runs then overlap the many short tests
    instead of trailing after them."""
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)  # stable
