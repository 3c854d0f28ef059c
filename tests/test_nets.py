"""Tests of the backbones in nets/ (every module found there) and of layers.BatchNorm."""
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
def test_net_training_updates_only_batch_norm_statistics(name):
    model = _net_model(name)
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    assert before, 'every slim net has batch norm moving averages'
    model(_images(2, 64, 32), training=False)
    variables = model.non_trainable_variables
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True))
    model(_images(2, 64, 32), training=True)
    changed = [not np.array_equal(b, v.numpy())
               for b, v in zip(before, variables, strict=True)]
    assert all(changed)


# ----------------------------------------------------------------------------- BatchNorm
def _reference_bn(x, gamma, beta, mean, variance, epsilon):
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


@pytest.mark.parametrize('shape', [(6, 5, 4, 3), (7, 3)])
@pytest.mark.parametrize('mode', ['eager', 'tf.function'])
def test_batch_norm_matches_numpy(shape, mode):
    rng = np.random.RandomState(2)
    decay, epsilon = 0.9, 1e-3
    layer = layers.BatchNorm(decay=decay, epsilon=epsilon)
    x = (rng.randn(*shape) * 3 + 2).astype(np.float32)
    layer.build(x.shape)
    channels = shape[-1]
    gamma, beta = rng.rand(channels) + 0.5, rng.randn(channels)
    mean, variance = rng.randn(channels), rng.rand(channels) + 0.5
    for variable, value in zip([layer.gamma, layer.beta, layer.moving_mean,
                                layer.moving_variance], [gamma, beta, mean, variance], strict=True):
        variable.assign(value.astype(np.float32))
    call = layer if mode == 'eager' else tf.function(layer, autograph=False)

    out = call(x, training=False).numpy()
    np.testing.assert_allclose(out, _reference_bn(x, gamma, beta, mean, variance, epsilon),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-6)  # inference: no update

    flat = x.reshape(-1, channels)
    batch_mean, batch_var = flat.mean(0), flat.var(0)
    out = call(x, training=True).numpy()
    assert out.shape == x.shape
    np.testing.assert_allclose(out, _reference_bn(x, gamma, beta, batch_mean, batch_var, epsilon),
                               rtol=1e-4, atol=1e-4)
    # Moving averages move towards the batch mean and the unbiased batch variance (slim's fused).
    unbiased = flat.var(0, ddof=1)
    np.testing.assert_allclose(layer.moving_mean.numpy(), decay * mean + (1 - decay) * batch_mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               decay * variance + (1 - decay) * unbiased, rtol=1e-5, atol=1e-6)


def test_batch_norm_gradients_match_keras():
    # Keras' own BatchNormalization is the reference for the backward pass (same formula).
    rng = np.random.RandomState(3)
    x = tf.constant(rng.randn(8, 3, 2, 4).astype(np.float32))
    ours = layers.BatchNorm(epsilon=1e-3)
    theirs = keras.layers.BatchNormalization(epsilon=1e-3)
    weights = rng.randn(8, 3, 2, 4).astype(np.float32)
    grads = []
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2, 4).astype(np.float32))
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * weights)
        grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for g_ours, g_theirs in zip(*grads, strict=True):
        np.testing.assert_allclose(g_ours.numpy(), g_theirs.numpy(), rtol=1e-3, atol=1e-4)


def test_batch_norm_frozen_layer_uses_moving_averages():
    layer = layers.BatchNorm()
    x = np.random.RandomState(4).randn(4, 3).astype(np.float32) + 5
    layer.build(x.shape)
    layer.trainable = False
    out = layer(x, training=True).numpy()
    np.testing.assert_allclose(out, x / np.sqrt(1 + 1e-5), rtol=1e-4)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), np.zeros(3))


def test_batch_norm_weights_are_named_as_slim():
    layer = layers.BatchNorm(name='conv1.BatchNorm')
    layer.build((2, 3))
    names = sorted(v.path.split('/')[-1] for v in layer.weights)
    assert names == ['beta', 'gamma', 'moving_mean', 'moving_variance']
    assert [v.path.split('/')[-1] for v in layer.trainable_weights] == ['gamma', 'beta']
