"""model.load_keras_resnet: keras.applications' ResNet-50 weights in both file formats, without a
download: a Keras ResNet50 with random weights and statistics is saved and loaded back."""
import logging

import h5py
import keras
import numpy as np
import pytest

from common import InputError
from conftest import assert_close_float32
from model import (build_model, check_initial_checkpoint, load_initial_checkpoint,
                   read_keras_weights)


@pytest.fixture(scope='module')
def keras_files(tmp_path_factory):
    """The two files (Keras 2's .h5 as keras.applications downloads it, Keras 3's .weights.h5)
    of one random ResNet50, and what it computes on test images (pooled features)."""
    from keras.src.legacy.saving import legacy_h5_format
    keras.utils.set_random_seed(0)
    resnet = keras.applications.ResNet50(weights=None, include_top=False, pooling='avg')
    rng = np.random.default_rng(0)
    for layer in resnet.layers:  # batch norm statistics as after training, conv biases
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, size))
            layer.beta.assign(rng.normal(0, 0.2, size))
            layer.moving_mean.assign(rng.normal(0, 0.5, size))
            layer.moving_variance.assign(rng.uniform(0.5, 2, size))
        elif isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0, 0.2, layer.bias.shape))
    folder = tmp_path_factory.mktemp('keras')
    files = {'keras2': folder / 'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5',
             'keras3': folder / 'resnet50.weights.h5'}
    with h5py.File(files['keras2'], 'w') as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, resnet)
    resnet.save_weights(files['keras3'])
    images = rng.uniform(0, 255, (3, 64, 32, 3)).astype(np.float32)
    bgr = keras.applications.resnet50.preprocess_input(images.copy())
    return files, images, resnet(bgr, training=False).numpy()


@pytest.fixture(scope='module')
def keras_layout_model():
    return build_model('resnet_v1_50', 'bnneck', 2048, layout='keras')


@pytest.mark.slow
def test_keras_weights_compute_what_keras_computes(keras_files, keras_layout_model, caplog):
    files, images, expected = keras_files
    model = keras_layout_model
    for kind, path in files.items():
        for variable in model.variables:  # start over, so that each file shows itself
            variable.assign(np.zeros(variable.shape, variable.dtype))
        with caplog.at_level(logging.INFO, logger='triplet-reid'):
            result = load_initial_checkpoint(model, path)
        assert len(result['loaded']) == 106, kind  # 53 convolutions, 53 batch norms
        assert 'bnneck/BatchNorm/gamma' in result['missing']  # the head starts fresh
        got = model(images, training=False)['model_output'].numpy()
        assert np.abs(expected).max() > 1 and expected.std() > 0.1  # not a degenerate output
        assert_close_float32(got, expected, model)
    # slim's layout takes the same weights, computes something else, and says so.
    slim = build_model('resnet_v1_50', 'direct', 8)
    with caplog.at_level(logging.WARNING, logger='triplet-reid'):
        load_initial_checkpoint(slim, files['keras3'])
    assert '--resnet_layout keras computes exactly' in caplog.text
    assert np.abs(slim(images)['model_output'].numpy() - expected).max() > 0.01


def _write_keras2(path, layers: dict) -> None:
    """A Keras 2 weights file by hand: {layer: {weight: array}}."""
    with h5py.File(path, 'w') as f:
        f.attrs['layer_names'] = [name.encode() for name in layers]
        for layer, weights in layers.items():
            group = f.create_group(layer)
            group.attrs['weight_names'] = [f'{layer}/{name}:0'.encode() for name in weights]
            for name, value in weights.items():
                group.create_dataset(f'{layer}/{name}:0', data=value)


def test_files_of_other_architectures_are_refused_in_one_line(keras_files, keras_layout_model,
                                                             tmp_path):
    files, model = keras_files[0], keras_layout_model
    conv = {'kernel': np.zeros((3, 3, 3, 8), np.float32), 'bias': np.zeros(8, np.float32)}
    mobilenet = tmp_path / 'mobilenet.h5'
    _write_keras2(mobilenet, {'conv1': conv, 'conv_dw_1': conv})
    with pytest.raises(InputError, match='is not a Keras ResNet v1: it has conv_dw_1; expected '
                                         'only the layers of keras.applications.ResNet50'):
        load_initial_checkpoint(model, mobilenet)
    # A deeper ResNet: ResNet-101's conv4_block7 is not in ResNet-50.
    layers = read_keras_weights(files['keras2'])
    deeper = tmp_path / 'resnet101.h5'
    _write_keras2(deeper, {**layers, 'conv4_block7_1_conv': layers['conv4_block6_1_conv']})
    with pytest.raises(InputError, match='has conv4_block7_1_conv, which resnet_v1_50 lacks'):
        load_initial_checkpoint(model, deeper)
    shallower = tmp_path / 'shallower.h5'
    _write_keras2(shallower, {name: weights for name, weights in layers.items()
                              if not name.startswith('conv5_block3')})
    with pytest.raises(InputError, match='lacks the weights of resnet_v1_50.block4.unit_3'):
        load_initial_checkpoint(model, shallower)
    with pytest.raises(InputError, match='fit only the ResNets'):
        load_initial_checkpoint(build_model('small_cnn', 'direct', 8), files['keras3'])
    for name in ('garbage.h5', 'empty.h5'):
        path = tmp_path / name
        if name == 'garbage.h5':
            path.write_bytes(b'\x89HDF\r\n\x1a\n' + b'\0' * 40)  # the signature, then nothing
        else:
            h5py.File(path, 'w').close()
        with pytest.raises(InputError, match=f'{name}'):
            check_initial_checkpoint(path)
