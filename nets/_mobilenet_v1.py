"""MobileNet v1 laid out as TF-slim's mobilenet_v1, so that slim's checkpoints load by name.

Keras 3 forbids '/' in layer names, so a slim scope `MobilenetV1/Conv2d_1_depthwise` is the
layer `MobilenetV1.Conv2d_1_depthwise`; model.load_tf1_checkpoint maps the names back.
"""
import keras

import layers

SCOPE = 'MobilenetV1'

# (kind, stride, depth at multiplier 1) of Conv2d_0 .. Conv2d_13, as in the MobileNet paper.
LAYERS = [('conv', 2, 32)] + [('separable', stride, depth) for stride, depth in [
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024)]]

# slim's mobilenet_v1_arg_scope epsilon, with which the published checkpoints were trained;
# decay 0.9 as the 2017 code trained, not slim's 0.9997, which would keep the moving averages
# near their starting values for thousands of iterations.
BN_DECAY = 0.9
BN_EPSILON = 1e-3
MIN_DEPTH = 8


def _bn_relu6(x, name: str):
    x = layers.BatchNorm(BN_DECAY, BN_EPSILON, name=f'{name}.BatchNorm')(x)
    return keras.layers.ReLU(6.0, name=f'{name}.relu6')(x)


def endpoints(images, depth_multiplier: float, pooling: str = 'avg') -> dict:
    """Builds MobileNet v1 on `images`.

    Args:
        images: Keras tensor (B, H, W, 3), float RGB in [0, 255]; any H and W.
        depth_multiplier: width factor (1.0, 0.75, 0.5, 0.25), as slim's depth_multiplier.
        pooling: `avg`, `max` or `gem` (layers.global_pool).

    Returns:
        dict with `model_output` = `global_pool`, the pooled (by default averaged) last layer's
        features (B, F), where F = max(1024 * depth_multiplier, 8). Feature maps are not
        endpoints, as model.predict would gather them for every image; for debugging, read
        them with model.get_layer('MobilenetV1.Conv2d_13_pointwise.relu6').output.
    """
    init = keras.initializers.TruncatedNormal(stddev=0.09)  # slim's mobilenet_v1 default
    x = images / 127.5 - 1.0  # the [-1, 1] inputs slim's MobileNet checkpoints were trained on
    for i, (kind, stride, depth) in enumerate(LAYERS):
        depth = max(int(depth * depth_multiplier), MIN_DEPTH)
        if kind == 'conv':
            name = f'{SCOPE}.Conv2d_{i}'
            x = keras.layers.Conv2D(depth, 3, stride, 'same', use_bias=False,
                                    kernel_initializer=init, name=name)(x)
            x = _bn_relu6(x, name)
            continue
        name = f'{SCOPE}.Conv2d_{i}_depthwise'
        x = keras.layers.DepthwiseConv2D(3, stride, 'same', use_bias=False,
                                         depthwise_initializer=init, name=name)(x)
        x = _bn_relu6(x, name)
        name = f'{SCOPE}.Conv2d_{i}_pointwise'
        x = keras.layers.Conv2D(depth, 1, use_bias=False, kernel_initializer=init, name=name)(x)
        x = _bn_relu6(x, name)
    pooled = layers.global_pool(x, pooling, f'{SCOPE}.global_pool')
    return {'global_pool': pooled, 'model_output': pooled}
