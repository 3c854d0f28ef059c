"""ResNet v1 laid out as TF-slim's resnet_v1, so that slim's checkpoints load by name.

As in slim (and unlike keras.applications): the stride of a block sits in the 3x3 conv of
the block's LAST unit, strided convolutions pad explicitly (slim's conv2d_same), no conv has
a bias because batch norm follows each one, and a unit projects its shortcut only where the
depth changes (else a strided unit subsamples it). Keras 3 forbids '/' in layer names, so
the slim scope `resnet_v1_50/block1/unit_1/bottleneck_v1/conv1` is the layer
`resnet_v1_50.block1.unit_1.bottleneck_v1.conv1`; model.load_tf1_checkpoint maps it back.

`layout='keras'` builds keras.applications' ResNet instead, with the same variables: the
stride of blocks 2-4 in the 1x1 conv1 and the shortcut of the block's FIRST unit, max pooling
after conv1 over a zero-padded border (Keras pads 1 pixel on every side; slim's SAME pads only
after), and Keras' (caffe) ImageNet means. With Keras' weights mapped onto it
(model.load_keras_resnet) it computes what keras.applications.ResNet50 computes, at 11% more
FLOPs than slim's layout (see DESIGN.md).

`last_stride=1` keeps the resolution of the last block (16x8 at 256x128 instead of 8x4), as
Luo et al.'s strong baseline: the stride-2 unit that leads into block4 becomes stride 1 (in
slim's layout the last unit of block3, in Keras' the first unit of block4). It changes no
variable, so every checkpoint still loads.
"""
import keras

import layers

# ImageNet RGB means that slim's ResNet checkpoints were trained with (and the 2017 code used).
RGB_MEAN = (123.68, 116.78, 103.94)
# keras.applications' "caffe" preprocessing subtracts these from BGR images; here in RGB order.
KERAS_RGB_MEAN = (123.68, 116.779, 103.939)
LAYOUTS = ('slim', 'keras')

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


def _bottleneck(x, depth: int, stride: int, name: str, stride_in_3x3: bool = True):
    """One unit: 1x1 (depth) -> 3x3 (depth, stride) -> 1x1 (4 depth), plus the shortcut; with
    stride_in_3x3 False (Keras' layout) the stride is in the first 1x1 instead."""
    if x.shape[-1] == 4 * depth:
        shortcut = x
        if stride > 1:
            shortcut = keras.layers.MaxPooling2D(1, stride, name=f'{name}.shortcut')(x)
    else:
        shortcut = _conv_bn(x, 4 * depth, 1, stride, f'{name}.shortcut', relu=False)
    y = _conv_bn(x, depth, 1, 1 if stride_in_3x3 else stride, f'{name}.conv1')
    y = _conv_bn(y, depth, 3, stride if stride_in_3x3 else 1, f'{name}.conv2')
    y = _conv_bn(y, 4 * depth, 1, 1, f'{name}.conv3', relu=False)
    y = keras.layers.Add(name=f'{name}.add')([shortcut, y])
    return keras.layers.ReLU(name=f'{name}.relu')(y)


def endpoints(images, scope: str, units: tuple[int, int, int, int], last_stride: int = 2,
              pooling: str = 'avg', layout: str = 'slim') -> dict:
    """Builds a ResNet v1 on `images`.

    Args:
        images: Keras tensor (B, H, W, 3), float RGB in [0, 255]; any H and W.
        scope: slim's top scope and the prefix of every layer name, e.g. `resnet_v1_50`.
        units: the number of bottleneck units in block1..block4, e.g. (3, 4, 6, 3).
        last_stride: 2 (output stride 32) or 1 (16: block4 keeps block3's resolution).
        pooling: `avg`, `max` or `gem` (layers.global_pool).
        layout: `slim` or `keras` (see the module docstring).

    Returns:
        dict with `model_output` = `global_pool`, the pooled block4 (B, 2048).
        Feature maps are not endpoints, as model.predict would gather them for every image;
        for debugging, read e.g. model.get_layer('resnet_v1_50.block4.unit_3.bottleneck_v1.relu').

    Raises:
        ValueError: a last_stride, pooling or layout that does not exist.
    """
    if last_stride not in (1, 2):
        raise ValueError(f'last_stride must be 1 or 2, not {last_stride!r}')
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; choose from {", ".join(LAYOUTS)}')
    keras_layout = layout == 'keras'
    x = images - keras.ops.convert_to_tensor(KERAS_RGB_MEAN if keras_layout else RGB_MEAN)
    x = _conv_bn(x, 64, 7, 2, f'{scope}.conv1')
    if keras_layout:
        x = keras.layers.ZeroPadding2D(1, name=f'{scope}.pool1.pad')(x)  # ReLU'd: 0 = -inf
        x = keras.layers.MaxPooling2D(3, 2, name=f'{scope}.pool1')(x)
    else:
        x = keras.layers.MaxPooling2D(3, 2, 'same', name=f'{scope}.pool1')(x)
    # Output stride 32 (16 with last_stride 1). slim: block k's last unit strides into block
    # k + 1, block4 keeps its resolution; Keras: the first unit of blocks 2-4 strides.
    strides = (1, 2, 2, last_stride) if keras_layout else (2, 2, last_stride, 1)
    blocks = zip(units, (64, 128, 256, 512), strides, strict=True)
    for block, (count, depth, stride) in enumerate(blocks, start=1):
        for unit in range(1, count + 1):
            strided = unit == (1 if keras_layout else count)
            x = _bottleneck(x, depth, stride if strided else 1,
                            f'{scope}.block{block}.unit_{unit}.bottleneck_v1',
                            stride_in_3x3=not keras_layout)
    pooled = layers.global_pool(x, pooling, f'{scope}.pool5')
    return {'global_pool': pooled, 'model_output': pooled}
