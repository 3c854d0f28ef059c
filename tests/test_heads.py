"""Tests of the embedding heads in heads/ (every module found there), on a stand-in net output."""
import numpy as np
import pytest
import tensorflow as tf
import keras

from model import import_plugin, plugin_names
from conftest import assert_close_float32

HEADS = plugin_names('heads')
FEATURES, EMBEDDING_DIM = 12, 5


def _head_model(name):
    features = keras.Input((FEATURES,))
    endpoints = import_plugin('heads', name).endpoints({'model_output': features},
                                                       EMBEDDING_DIM)
    return keras.Model(features, endpoints)


def _features(batch=6, seed=0):
    return np.random.RandomState(seed).randn(batch, FEATURES).astype(np.float32)


@pytest.mark.parametrize('name', HEADS)
def test_head_endpoints(name):
    model = _head_model(name)
    out = model(_features(), training=False)
    assert {'model_output', 'emb_raw', 'emb'} <= set(out)
    assert out['emb'].shape == out['emb_raw'].shape == (6, EMBEDDING_DIM)
    np.testing.assert_array_equal(out['model_output'].numpy(), _features())  # passed through
    norms = np.linalg.norm(out['emb'].numpy(), axis=1)
    if name.endswith('_normalize'):
        np.testing.assert_allclose(norms, 1, rtol=1e-5)
        raw = out['emb_raw'].numpy()
        np.testing.assert_allclose(out['emb'].numpy(),
                                   raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5)
    else:
        np.testing.assert_array_equal(out['emb'].numpy(), out['emb_raw'].numpy())


@pytest.mark.parametrize('name', HEADS)
def test_head_gradients_finite_even_for_identical_inputs(name):
    model = _head_model(name)
    for features in (_features(), np.zeros((4, FEATURES), np.float32)):
        with tf.GradientTape() as tape:
            emb = model(features, training=True)['emb']
            loss = tf.reduce_sum(emb * np.arange(EMBEDDING_DIM, dtype=np.float32))
        grads = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize('name', HEADS)
def test_head_eager_and_tf_function_agree(name):
    model = _head_model(name)
    compiled = tf.function(lambda x, training: model(x, training=training)['emb'],
                           autograph=False)
    for training in (False, True):
        # Graph rewrites fuse the matrix product with the bias: other kernels, other rounding.
        assert_close_float32(compiled(_features(seed=1), training).numpy(),
                             model(_features(seed=1), training=training)['emb'].numpy(), model)


# ----------------------------------------------------------------------------- the paper's heads
PAPER_HEADS = ('direct', 'direct_normalize', 'fc1024', 'fc1024_normalize')


@pytest.mark.parametrize('name', PAPER_HEADS)
def test_emb_layer_is_orthogonal_with_bias(name):
    # The paper's embedding layer: orthogonal init, and a bias (no batch norm follows it).
    emb = _head_model(name).get_layer('emb')
    kernel = emb.kernel.numpy()
    assert emb.use_bias and emb.bias.shape == (EMBEDDING_DIM,)
    gram = kernel.T @ kernel if kernel.shape[0] >= kernel.shape[1] else kernel @ kernel.T
    np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-5)


def test_fc1024_matches_numpy_in_training_mode():
    model = _head_model('fc1024')
    x = _features(batch=8, seed=2)
    bn = model.get_layer('fully_connected.BatchNorm')
    assert (bn.decay, bn.epsilon, bn.scale) == (0.9, 1e-5, True)
    assert not model.get_layer('fully_connected').use_bias  # batch norm follows
    out = model(x, training=True)
    h = x @ model.get_layer('fully_connected').kernel.numpy()
    h = np.maximum((h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5), 0)  # gamma 1, beta 0 at init
    assert_close_float32(out['head_output'].numpy(), h, model)
    emb = model.get_layer('emb')
    assert_close_float32(out['emb'].numpy(), h @ emb.kernel.numpy() + emb.bias.numpy(), model)
    np.testing.assert_allclose(bn.moving_mean.numpy(),
                               0.1 * (x @ model.get_layer('fully_connected').kernel.numpy())
                               .mean(0), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- BNNeck
def test_bnneck_feature_logits_and_inference_feature_match_numpy():
    features = keras.Input((FEATURES,))
    head = import_plugin('heads', 'bnneck')
    model = keras.Model(features, head.endpoints({'model_output': features}, FEATURES,
                                                 num_classes=7))
    bn, classifier = model.get_layer('bnneck.BatchNorm'), model.get_layer('bnneck.classifier')
    assert not classifier.use_bias and 'bnneck.fc' not in [layer.name for layer in model.layers]
    rng = np.random.RandomState(3)
    gamma, mean, variance = rng.rand(FEATURES) + 0.5, rng.randn(FEATURES), rng.rand(FEATURES) + .5
    for variable, value in ((bn.gamma, gamma), (bn.moving_mean, mean),
                            (bn.moving_variance, variance)):
        variable.assign(value.astype(np.float32))
    x = _features(batch=8, seed=4)
    out = model(x, training=False)
    np.testing.assert_array_equal(out['train_emb'].numpy(), x)  # f: the pooled feature itself
    inference = (x - mean) / np.sqrt(variance + 1e-5) * gamma  # shift frozen at 0
    assert_close_float32(out['emb'].numpy(), inference, model)
    assert_close_float32(out['logits'].numpy(), inference @ classifier.kernel.numpy(), model)
    out = model(x, training=True)  # the batch's moments
    batch = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) * gamma
    assert_close_float32(out['emb'].numpy(), batch, model)
    # Training the logits moves gamma and the classifier, never the frozen shift.
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(model(x, training=True)['logits'] ** 2)
    grads = tape.gradient(total, model.trainable_variables)
    assert {v.path for v in model.trainable_variables} == {'bnneck.BatchNorm/gamma',
                                                          'bnneck.classifier/kernel'}
    assert all(g is not None for g in grads)
    np.testing.assert_array_equal(bn.beta.numpy(), 0)


def test_bnneck_fc_and_the_inference_model_without_classifier():
    from model import build_model, inference_model
    model = build_model('small_cnn', 'bnneck', 6, num_classes=5)
    assert model.get_layer('bnneck.fc').kernel.shape == (128, 6)
    assert model.output['logits'].shape[-1] == 5
    plain = inference_model(model)
    assert 'logits' not in plain.output and 'train_emb' not in plain.output
    assert 'bnneck.classifier' not in [layer.name for layer in plain.layers]
    images = np.random.RandomState(5).uniform(0, 255, (3, 32, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(plain(images)['emb'].numpy(), model(images)['emb'].numpy())
    assert inference_model(build_model('small_cnn', 'bnneck', 6)).output.keys() == {
        'model_output', 'global_pool', 'emb_raw', 'emb'}
