"""ResNet v1 laid out as TF-slim's resnet_v1, so that slim's checkpoints load by name.

As in slim (and unlike keras.applications): the stride of a block sits in the 3x3 conv of
the block's LAST unit, strided convolutions pad explicitly (slim's conv2d_same), no conv has
a bias because batch norm follows each one, and a unit projects its shortcut only where the
depth changes (else a strided unit subsamples it). Keras 3 forbids '/' in layer names, so
the slim scope `resnet_v1_50/block1/unit_1/bottleneck_v1/conv1` is the layer
`resnet_v1_50.block1.unit_1.bottleneck_v1.conv1`; model.load_tf1_checkpoint maps it back.
"""
import keras

import layers

# ImageNet RGB means that slim's ResNet checkpoints were trained with (and the 2017 code used).
RGB_MEAN = (123.68, 116.78, 103.94)

# slim's epsilon, with which the published checkpoints were trained; decay 0.9 as the 2017
# code trained (resnet_arg_scope(batch_norm_decay=0.9)), not slim's 0.997: the moving averages
# must follow the re-id data within a few hundred iterations, not keep ImageNet's statistics.
BN_DECAY = 0.9
BN_EPSILON = 1e-5


def _conv_bn(x, depth: int, size: int, stride: int, name: str, relu: bool = True):
    """slim's conv2d (or conv2d_same when strided) + batch_norm (+ ReLU) under scope `name`."""
    padding = 'same'
    if stride > 1 and size > 1:
        # conv2d_same: pad as if for stride 1, so the result does not depend on H, W parity.
        before = (size - 1) // 2
        pads = (before, size - 1 - before)
        x = keras.layers.ZeroPadding2D((pads, pads), name=f'{name}.pad')(x)
        padding = 'valid'
    x = keras.layers.Conv2D(depth, size, stride, padding, use_bias=False,
                            kernel_initializer='he_normal', name=name)(x)
    x = layers.BatchNorm(BN_DECAY, BN_EPSILON, name=f'{name}.BatchNorm')(x)
    return keras.layers.ReLU(name=f'{name}.relu')(x) if relu else x


def _bottleneck(x, depth: int, stride: int, name: str):
    """One unit: 1x1 (depth) -> 3x3 (depth, stride) -> 1x1 (4 depth), plus the shortcut."""
    if x.shape[-1] == 4 * depth:
        shortcut = x
        if stride > 1:
            shortcut = keras.layers.MaxPooling2D(1, stride, name=f'{name}.shortcut')(x)
    else:
        shortcut = _conv_bn(x, 4 * depth, 1, stride, f'{name}.shortcut', relu=False)
    y = _conv_bn(x, depth, 1, 1, f'{name}.conv1')
    y = _conv_bn(y, depth, 3, stride, f'{name}.conv2')
    y = _conv_bn(y, 4 * depth, 1, 1, f'{name}.conv3', relu=False)
    y = keras.layers.Add(name=f'{name}.add')([shortcut, y])
    return keras.layers.ReLU(name=f'{name}.relu')(y)


def endpoints(images, scope: str, units: tuple[int, int, int, int]) -> dict:
    """Builds a ResNet v1 on `images`.

    Args:
        images: Keras tensor (B, H, W, 3), float RGB in [0, 255]; any H and W.
        scope: slim's top scope and the prefix of every layer name, e.g. `resnet_v1_50`.
        units: the number of bottleneck units in block1..block4, e.g. (3, 4, 6, 3).

    Returns:
        dict with `model_output` = `global_pool`, the spatial mean of block4 (B, 2048).
        Feature maps are not endpoints, as model.predict would gather them for every image;
        for debugging, read e.g. model.get_layer('resnet_v1_50.block4.unit_3.bottleneck_v1.relu').
    """
    x = images - keras.ops.convert_to_tensor(RGB_MEAN)
    x = _conv_bn(x, 64, 7, 2, f'{scope}.conv1')
    x = keras.layers.MaxPooling2D(3, 2, 'same', name=f'{scope}.pool1')(x)
    # Output stride 32: block4 keeps its resolution, as in slim's resnet_v1_50/101.
    blocks = zip(units, (64, 128, 256, 512), (2, 2, 2, 1), strict=True)
    for block, (count, depth, stride) in enumerate(blocks, start=1):
        for unit in range(1, count + 1):
            x = _bottleneck(x, depth, stride if unit == count else 1,
                            f'{scope}.block{block}.unit_{unit}.bottleneck_v1')
    pooled = keras.layers.GlobalAveragePooling2D(name=f'{scope}.pool5')(x)
    return {'global_pool': pooled, 'model_output': pooled}
