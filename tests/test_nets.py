"""Tests of the backbones in nets/: the contract for every module found there, then the
properties of this project's nets."""
import functools

import numpy as np
import pytest
import tensorflow as tf
import keras

import layers
from model import import_plugin, plugin_names
from conftest import assert_close_float32

NETS = plugin_names('nets')


def _images(batch, height, width, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (batch, height, width, 3)).astype(np.float32)


@functools.cache  # building ResNet-101 takes seconds: once per net for all tests
def _net_model(name):
    images = keras.Input((None, None, 3))
    return keras.Model(images, import_plugin('nets', name).endpoints(images))


# ----------------------------------------------------------------------------- nets
@pytest.mark.parametrize('name', NETS)
def test_net_endpoints_any_size_and_finite_gradients(name):
    model = _net_model(name)
    features = None
    for height, width in [(64, 32), (40, 24)]:  # any H, W; odd sizes after striding too
        out = model(_images(2, height, width), training=False)
        assert out['model_output'].shape[0] == 2 and out['model_output'].shape.rank == 2
        features = features or out['model_output'].shape[1]
        assert out['model_output'].shape[1] == features  # pooled: independent of H, W
        assert np.isfinite(out['model_output'].numpy()).all()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(_images(2, 64, 32), training=True)['model_output'] ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    assert any(np.abs(g.numpy()).max() > 0 for g in grads)


@pytest.mark.parametrize('name', NETS)
def test_net_eager_and_tf_function_agree(name):
    model = _net_model(name)
    # In training mode batch norm divides by the batch's own standard deviation; over a handful
    # of values (2 images x 2x1 pixels at the deepest layers) that can be far below the
    # activations' scale and amplify rounding errors by the ratio. 4 images of 128x64 give at
    # least 32 values per channel, enough for the bound of float32_tolerance to hold.
    images = _images(4, 128, 64, seed=1)
    compiled = tf.function(lambda x, training: model(x, training=training)['model_output'],
                           autograph=False)
    for training in (False, True):
        eager = model(images, training=training)['model_output'].numpy()
        graph = compiled(images, training).numpy()
        # Graph rewrites fuse convolution and batch norm: other kernels, other rounding.
        assert_close_float32(graph, eager, model)


@pytest.mark.parametrize('name', NETS)
def test_inference_changes_no_variable(name):
    model = _net_model(name)
    before = [v.numpy().copy() for v in model.variables]
    model(_images(2, 64, 32), training=False)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.variables, strict=True))


# ----------------------------------------------------------------------------- this project's nets
# All of them normalise with layers.BatchNorm: training moves every moving average and nothing
# else that is not trained.
BATCH_NORM_NETS = ('mobilenet_v1_0_25', 'mobilenet_v1_1_224', 'resnet_v1_101', 'resnet_v1_50',
                   'small_cnn')


@pytest.mark.parametrize('name', BATCH_NORM_NETS)
def test_training_moves_every_batch_norm_statistic(name):
    model = _net_model(name)
    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNorm)]
    statistics = [v for layer in norms for v in (layer.moving_mean, layer.moving_variance)]
    assert {id(v) for v in statistics} == {id(v) for v in model.non_trainable_variables}
    before = [v.numpy().copy() for v in statistics]
    model(_images(2, 64, 32), training=True)
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, statistics, strict=True))


# ----------------------------------------------------------------------------- options
def test_last_stride_one_keeps_16x8_at_256x128():
    block4 = 'resnet_v1_50.block4.unit_3.bottleneck_v1.relu'
    default = _net_model('resnet_v1_50')  # slim's layout, last stride 2: 8x4
    assert keras.Model(default.input, default.get_layer(block4).output)(
        _images(1, 256, 128)).shape == (1, 8, 4, 2048)
    images = keras.Input((256, 128, 3))  # static shapes: no forward pass needed
    model = keras.Model(images, import_plugin('nets', 'resnet_v1_50').endpoints(
        images, last_stride=1))
    assert tuple(model.get_layer(block4).output.shape) == (None, 16, 8, 2048)
    # The same variables as the default net: its checkpoints still load.
    assert [(v.path, v.shape) for v in model.weights] == [(v.path, v.shape)
                                                          for v in default.weights]
    # Keras' layout strides elsewhere (the first unit of a block); one unit per block suffices.
    from nets import _resnet_v1
    for last_stride, size in ((2, (8, 4)), (1, (16, 8))):
        out = _resnet_v1.endpoints(images, 'r', (1, 1, 1, 1), last_stride, layout='keras')
        unit = keras.Model(images, out).get_layer('r.block4.unit_1.bottleneck_v1.relu')
        assert tuple(unit.output.shape) == (None, *size, 2048)


def test_net_options_are_refused_by_nets_without_them():
    from common import InputError
    from model import build_model
    with pytest.raises(InputError, match='--last_stride 1: nets/small_cnn.py has no such option'):
        build_model('small_cnn', 'direct', 4, last_stride=1)
    with pytest.raises(InputError, match="--pooling 'median'"):
        build_model('small_cnn', 'direct', 4, pooling='median')
    model = build_model('small_cnn', 'direct', 4, pooling='gem', last_stride=2)  # 2: the default
    assert model.get_layer('gem_pool').p.numpy() == 3
