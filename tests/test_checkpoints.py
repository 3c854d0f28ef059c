"""Tests of model.load_tf1_checkpoint on TF1 checkpoints that the tests write in slim's format.

The checkpoints are written as the 2017 code and TF-slim wrote them: slim-named variables in a
tf.Graph saved by tf.compat.v1.train.Saver, in the old single-file V1 format (as the published
resnet_v1_50.ckpt) or in V2 (.index + .data, as a 2017 experiment root), with extra variables
the model lacks (ImageNet logits, Adam slots, global_step).
"""
import logging

import numpy as np
import pytest
import tensorflow as tf

import common
from model import build_model, load_tf1_checkpoint, plugin_names, slim_name
from conftest import assert_close_float32

NETS = plugin_names('nets')
# The 2017 code's heads, whose output the tests compute by hand from the checkpoint's values.
PAPER_HEADS = ('direct', 'direct_normalize', 'fc1024', 'fc1024_normalize')
EMBEDDING_DIM = 8


# ----------------------------------------------------------------------------- slim's layouts
# Written from slim's rules, independently of nets/, to check that our names are slim's.
def _bn(scope, depth):
    return {f'{scope}/BatchNorm/{name}': (depth,)
            for name in ('gamma', 'beta', 'moving_mean', 'moving_variance')}


def slim_resnet_shapes(scope, units):
    shapes = {f'{scope}/conv1/weights': (7, 7, 3, 64), **_bn(f'{scope}/conv1', 64)}
    depth_in = 64
    for block, (count, depth) in enumerate(zip(units, (64, 128, 256, 512), strict=True), start=1):
        for unit in range(1, count + 1):
            prefix = f'{scope}/block{block}/unit_{unit}/bottleneck_v1'
            convs = [('conv1', (1, 1, depth_in, depth)), ('conv2', (3, 3, depth, depth)),
                     ('conv3', (1, 1, depth, 4 * depth))]
            if depth_in != 4 * depth:
                convs.append(('shortcut', (1, 1, depth_in, 4 * depth)))
            for conv, shape in convs:
                shapes[f'{prefix}/{conv}/weights'] = shape
                shapes.update(_bn(f'{prefix}/{conv}', shape[-1]))
            depth_in = 4 * depth
    return shapes


MOBILENET_DEPTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
MOBILENET_STRIDES = (2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)


def slim_mobilenet_shapes(multiplier):
    depths = [max(int(d * multiplier), 8) for d in MOBILENET_DEPTHS]
    shapes = {'MobilenetV1/Conv2d_0/weights': (3, 3, 3, depths[0]),
              **_bn('MobilenetV1/Conv2d_0', depths[0])}
    for i in range(1, 14):
        shapes[f'MobilenetV1/Conv2d_{i}_depthwise/depthwise_weights'] = (3, 3, depths[i - 1], 1)
        shapes.update(_bn(f'MobilenetV1/Conv2d_{i}_depthwise', depths[i - 1]))
        shapes[f'MobilenetV1/Conv2d_{i}_pointwise/weights'] = (1, 1, depths[i - 1], depths[i])
        shapes.update(_bn(f'MobilenetV1/Conv2d_{i}_pointwise', depths[i]))
    return shapes


SLIM_SHAPES = {
    'resnet_v1_50': lambda: slim_resnet_shapes('resnet_v1_50', (3, 4, 6, 3)),
    'resnet_v1_101': lambda: slim_resnet_shapes('resnet_v1_101', (3, 4, 23, 3)),
    'mobilenet_v1_1_224': lambda: slim_mobilenet_shapes(1.0),
    'mobilenet_v1_0_25': lambda: slim_mobilenet_shapes(0.25),
}

# The 1000/1001-class classifiers of slim's ImageNet checkpoints, which the model lacks.
LOGITS = {'resnet': ('{scope}/logits/weights', '{scope}/logits/biases'),
          'mobilenet': ('MobilenetV1/Logits/Conv2d_1c_1x1/weights',
                        'MobilenetV1/Logits/Conv2d_1c_1x1/biases')}


def slim_head_shapes(head, features):
    if head.startswith('fc1024'):
        return {'fully_connected/weights': (features, 1024), **_bn('fully_connected', 1024),
                'emb/weights': (1024, EMBEDDING_DIM), 'emb/biases': (EMBEDDING_DIM,)}
    return {'emb/weights': (features, EMBEDDING_DIM), 'emb/biases': (EMBEDDING_DIM,)}


# ----------------------------------------------------------------------------- slim's forward pass
def slim_forward(values, net, image):
    """The pooled features of a slim ResNet v1 or MobileNet v1, from raw tf.nn ops."""
    def bn(x, scope, epsilon):
        get = lambda name: values[f'{scope}/BatchNorm/{name}']  # noqa: E731
        return (x - get('moving_mean')) / np.sqrt(get('moving_variance') + epsilon) * \
            get('gamma') + get('beta')

    def conv(x, scope, stride, explicit_pad):
        weights = values[f'{scope}/weights']
        size = weights.shape[0]
        if explicit_pad and stride > 1 and size > 1:  # slim's conv2d_same
            before = (size - 1) // 2
            x = tf.pad(x, [[0, 0], [before, size - 1 - before], [before, size - 1 - before],
                           [0, 0]])
            return tf.nn.conv2d(x, weights, stride, 'VALID')
        return tf.nn.conv2d(x, weights, stride, 'SAME')

    if net.startswith('resnet'):
        units = {'resnet_v1_50': (3, 4, 6, 3), 'resnet_v1_101': (3, 4, 23, 3)}[net]
        x = image - np.array([123.68, 116.78, 103.94], np.float32)
        x = tf.nn.relu(bn(conv(x, f'{net}/conv1', 2, True), f'{net}/conv1', 1e-5))
        x = tf.nn.max_pool2d(x, 3, 2, 'SAME')
        for block, (count, stride) in enumerate(zip(units, (2, 2, 2, 1), strict=True), start=1):
            for unit in range(1, count + 1):
                prefix = f'{net}/block{block}/unit_{unit}/bottleneck_v1'
                s = stride if unit == count else 1  # slim: the last unit of a block strides
                if f'{prefix}/shortcut/weights' in values:
                    shortcut = bn(conv(x, f'{prefix}/shortcut', s, True), f'{prefix}/shortcut',
                                  1e-5)
                else:
                    shortcut = x[:, ::s, ::s]
                y = x
                for name, conv_stride in [('conv1', 1), ('conv2', s), ('conv3', 1)]:
                    y = bn(conv(y, f'{prefix}/{name}', conv_stride, True), f'{prefix}/{name}',
                           1e-5)
                    y = tf.nn.relu(y) if name != 'conv3' else y
                x = tf.nn.relu(shortcut + y)
        return tf.reduce_mean(x, [1, 2]).numpy()
    x = image / 127.5 - 1.0
    x = tf.nn.relu6(bn(conv(x, 'MobilenetV1/Conv2d_0', 2, False), 'MobilenetV1/Conv2d_0', 1e-3))
    for i in range(1, 14):
        scope = f'MobilenetV1/Conv2d_{i}_depthwise'
        stride = MOBILENET_STRIDES[i]
        x = tf.nn.depthwise_conv2d(x, values[f'{scope}/depthwise_weights'],
                                   [1, stride, stride, 1], 'SAME')
        x = tf.nn.relu6(bn(x, scope, 1e-3))
        scope = f'MobilenetV1/Conv2d_{i}_pointwise'
        x = tf.nn.relu6(bn(conv(x, scope, 1, False), scope, 1e-3))
    return tf.reduce_mean(x, [1, 2]).numpy()


# ----------------------------------------------------------------------------- helpers
def random_values(shapes, seed=0):
    """Values a trained net could have: scaled weights, positive variances."""
    rng = np.random.RandomState(seed)
    values = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith('moving_variance') or name.endswith('gamma'):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith('weights') and len(shape) >= 2:
            value = rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            value = rng.randn(*shape) * 0.1
        values[name] = value.astype(np.float32)
    return values


def model_values(model):
    return {slim_name(layer, v): v.numpy() for layer in model.layers for v in layer.weights}


def model_shapes(model):
    return {name: value.shape for name, value in model_values(model).items()}


def _images(batch, height, width, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (batch, height, width, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize('net', NETS)
def test_model_variables_have_slim_names_and_shapes(net):
    if net not in SLIM_SHAPES:
        pytest.skip(f'no independent slim layout written down for {net}')
    model = build_model(net, 'fc1024', EMBEDDING_DIM)
    expected = SLIM_SHAPES[net]()
    features = model.output['model_output'].shape[-1]
    expected.update(slim_head_shapes('fc1024', features))
    assert model_shapes(model) == expected


@pytest.mark.parametrize('net', NETS)
def test_v1_imagenet_checkpoint_loads_backbone_and_reports(net, tmp_path, caplog,
                                                           write_tf1_checkpoint):
    model = build_model(net, 'fc1024', EMBEDDING_DIM)
    shapes = model_shapes(model)
    head = [name for name in shapes if name.split('/')[0] in ('fully_connected', 'emb')]
    backbone = {name: shape for name, shape in shapes.items() if name not in head}
    values = random_values(backbone)
    scope = next(iter(backbone)).split('/')[0]
    features = model.output['model_output'].shape[-1]
    kind = 'mobilenet' if scope == 'MobilenetV1' else 'resnet'
    logits = [name.format(scope=scope) for name in LOGITS[kind]]
    extras = {logits[0]: np.ones((1, 1, features, 10), np.float32),
              logits[1]: np.ones(10, np.float32)}
    path = write_tf1_checkpoint(tmp_path / f'{net}.ckpt', {**values, **extras}, 'V1',
                                global_step=123)
    assert not (tmp_path / f'{net}.ckpt.index').exists()  # truly the old single-file format
    head_before = {name: value for name, value in model_values(model).items() if name in head}

    with caplog.at_level(logging.INFO, logger='triplet-reid'):
        report = load_tf1_checkpoint(model, path)
    assert report['loaded'] == sorted(backbone)
    assert report['missing'] == sorted(head)
    assert report['ignored'] == sorted(logits + ['global_step'])
    assert f'loaded {len(backbone)} of' in caplog.text and logits[0] in caplog.text
    after = model_values(model)
    for name, value in values.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    for name, value in head_before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)

    if net in SLIM_SHAPES:
        image = _images(1, 64, 32)
        ours = model(image, training=False)['model_output'].numpy()
        assert_close_float32(ours, slim_forward(values, net, image), model)


@pytest.mark.parametrize('head', PAPER_HEADS)
def test_v2_experiment_checkpoint_with_adam_slots_loads_everything(head, tmp_path,
                                                                   write_tf1_checkpoint):
    # A 2017 experiment root: model, head, Adam slots and global_step, V2, found via `checkpoint`.
    model = build_model('mobilenet_v1_0_25', head, EMBEDDING_DIM)
    shapes = model_shapes(model)
    values = random_values(shapes, seed=1)
    slots = {f'{name}/{slot}': np.zeros_like(value) for name, value in values.items()
             for slot in ('Adam', 'Adam_1') if not name.split('/')[-1].startswith('moving')}
    slots.update({'beta1_power': np.float32(0.9), 'beta2_power': np.float32(0.999)})
    write_tf1_checkpoint(tmp_path / 'checkpoint-25000', {**values, **slots}, 'V2',
                         global_step=25000)
    assert (tmp_path / 'checkpoint-25000.index').exists()

    report = load_tf1_checkpoint(model, tmp_path, logging.getLogger('test'))
    assert report['loaded'] == sorted(shapes) and report['missing'] == []
    assert report['ignored'] == sorted([*slots, 'global_step'])
    after = model_values(model)
    assert all(np.array_equal(after[name], value) for name, value in values.items())

    # The head's output, computed independently from the checkpoint's values.
    out = model(_images(3, 64, 32), training=False)
    x = out['model_output'].numpy()
    if 'fully_connected/weights' in values:
        v = values
        x = x @ v['fully_connected/weights']
        x = (x - v['fully_connected/BatchNorm/moving_mean']) / np.sqrt(
            v['fully_connected/BatchNorm/moving_variance'] + 1e-5)
        x = np.maximum(x * v['fully_connected/BatchNorm/gamma'] +
                       v['fully_connected/BatchNorm/beta'], 0)
        assert_close_float32(out['head_output'].numpy(), x, model)
    emb = x @ values['emb/weights'] + values['emb/biases']
    assert_close_float32(out['emb_raw'].numpy(), emb, model)
    if head.endswith('_normalize'):
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert_close_float32(out['emb'].numpy(), emb, model)


def test_checkpoint_of_other_architectures_is_refused(tmp_path, write_tf1_checkpoint):
    mobilenet = build_model('mobilenet_v1_0_25', 'fc1024', EMBEDDING_DIM)
    shapes = model_shapes(mobilenet)
    before = model_values(mobilenet)

    # Another width of the same net: same names, other shapes.
    wide = random_values({**slim_mobilenet_shapes(1.0), **slim_head_shapes('fc1024', 1024)})
    path = write_tf1_checkpoint(tmp_path / 'wide.ckpt', wide, 'V1')
    with pytest.raises(common.InputError, match='MobilenetV1/Conv2d_0/weights has shape'):
        load_tf1_checkpoint(mobilenet, path)

    # A checkpoint that lacks part of a scope the model has (other block sizes, say).
    values = random_values(shapes)
    del values['MobilenetV1/Conv2d_7_pointwise/weights']
    path = write_tf1_checkpoint(tmp_path / 'partial.ckpt', values, 'V2')
    with pytest.raises(common.InputError, match='lacks 1 .*Conv2d_7_pointwise/weights'):
        load_tf1_checkpoint(mobilenet, path)

    # A 2017 fc1024 experiment into a direct head: emb/weights has another shape.
    path = write_tf1_checkpoint(tmp_path / 'fc1024.ckpt', random_values(shapes), 'V2')
    direct = build_model('mobilenet_v1_0_25', 'direct', EMBEDDING_DIM)
    with pytest.raises(common.InputError, match='emb/weights has shape'):
        load_tf1_checkpoint(direct, path)

    # ResNet-101 into ResNet-50: no name matches (slim scopes differ); values do not matter.
    resnet101 = {name: np.zeros(1, np.float32) for name in slim_resnet_shapes(
        'resnet_v1_101', (3, 4, 23, 3))}
    path = write_tf1_checkpoint(tmp_path / 'resnet_v1_101.ckpt', resnet101, 'V1')
    resnet50 = build_model('resnet_v1_50', 'fc1024', EMBEDDING_DIM)
    with pytest.raises(common.InputError, match='none of the variables.*resnet_v1_101/'):
        load_tf1_checkpoint(resnet50, path)
    # Nothing was assigned by the refused loads.
    after = model_values(mobilenet)
    assert all(np.array_equal(value, after[name]) for name, value in before.items())


def test_unreadable_checkpoint_is_an_input_error(tmp_path):
    model = build_model('mobilenet_v1_0_25', 'direct', EMBEDDING_DIM)
    with pytest.raises(common.InputError, match='cannot read checkpoint'):
        load_tf1_checkpoint(model, tmp_path / 'missing.ckpt')
    (tmp_path / 'garbage.ckpt').write_bytes(b'not a checkpoint')
    with pytest.raises(common.InputError, match='cannot read checkpoint'):
        load_tf1_checkpoint(model, tmp_path / 'garbage.ckpt')


def test_2017_checkpoint_loads_into_gem_and_bnneck(tmp_path, write_tf1_checkpoint):
    # The backbone of a 2017 root (or of slim's ImageNet checkpoint) in a strong-baseline model:
    # only GeM's p and the BNNeck head are new, and they keep their initial values.
    old = build_model('mobilenet_v1_0_25', 'fc1024', EMBEDDING_DIM)
    values = random_values(model_shapes(old), seed=2)
    path = write_tf1_checkpoint(tmp_path / 'checkpoint-100', values, 'V2', global_step=100)
    model = build_model('mobilenet_v1_0_25', 'bnneck', EMBEDDING_DIM, num_classes=5,
                        pooling='gem')
    report = load_tf1_checkpoint(model, path, logging.getLogger('test'))
    backbone = sorted(name for name in values if name.startswith('MobilenetV1/'))
    assert report['loaded'] == backbone
    assert report['missing'] == sorted(['gem_pool/p', 'bnneck/fc/weights',
                                        'bnneck/classifier/weights'] +
                                       [f'bnneck/BatchNorm/{name}' for name in
                                        ('gamma', 'beta', 'moving_mean', 'moving_variance')])
    assert model.get_layer('gem_pool').p.numpy() == 3
