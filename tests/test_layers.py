"""layers.py: BatchNorm against NumPy and Keras' own batch norm."""
import numpy as np
import pytest
import tensorflow as tf
import keras

import layers


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


# ----------------------------------------------------------------------------- GeM
@pytest.mark.parametrize('mode', ['eager', 'tf.function'])
def test_gem_matches_numpy_and_learns_p(mode):
    rng = np.random.RandomState(5)
    x = rng.randn(3, 4, 2, 5).astype(np.float32) + 0.5  # some negatives: clamped to eps
    layer = layers.GeMPooling()
    layer.build(x.shape)
    assert layer.p.numpy() == 3.0 and layer.p.trainable
    call = layer if mode == 'eager' else tf.function(layer, autograph=False)
    for p in (3.0, 1.0, 4.5):
        layer.p.assign(p)
        expected = (np.maximum(x, 1e-6).astype(np.float64) ** p).mean((1, 2)) ** (1 / p)
        np.testing.assert_allclose(call(x).numpy(), expected, rtol=2e-5)
    layer.p.assign(1.0)  # p = 1 is average pooling of the clamped map
    np.testing.assert_allclose(call(np.abs(x) + 1).numpy(), (np.abs(x) + 1).mean((1, 2)),
                               rtol=1e-5)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(x))
    grad = tape.gradient(total, layer.p).numpy()
    assert np.isfinite(grad) and grad != 0


def test_global_pool_names_and_choices():
    x = keras.Input((None, None, 6))
    assert layers.global_pool(x, 'avg', 'net.pool')._keras_history.operation.name == 'net.pool'
    assert isinstance(layers.global_pool(x, 'max', 'net.pool')._keras_history.operation,
                      keras.layers.GlobalMaxPooling2D)
    # GeM's weight stays out of the net's slim scope (see layers.global_pool).
    assert layers.global_pool(x, 'gem', 'net.pool')._keras_history.operation.name == 'gem_pool'
    with pytest.raises(ValueError, match='unknown pooling'):
        layers.global_pool(x, 'median', 'net.pool')


def test_batch_norm_without_center_keeps_beta_at_zero():
    layer = layers.BatchNorm(center=False)
    x = tf.constant(np.random.RandomState(6).randn(8, 3).astype(np.float32))
    layer.build(x.shape)
    assert [v.path.split('/')[-1] for v in layer.trainable_weights] == ['gamma']
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(x, training=True) * np.arange(3, dtype=np.float32))
    assert tape.gradient(total, layer.trainable_weights)[0] is not None
    np.testing.assert_array_equal(layer.beta.numpy(), np.zeros(3))
