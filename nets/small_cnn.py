"""A small plain CNN, trained from scratch in minutes on a CPU: the demo's backbone (128-D).

Four stages of two 3x3 conv + batch norm + ReLU layers (16, 32, 64, 128 channels), each
stage but the last followed by a 2x2 max pool, then global average pooling. At 128x64 input
it costs about 0.1 GFLOP per image, 40x less than ResNet-50. MobileNet v1 0.25, the smallest
slim net, barely learns from scratch in a few hundred iterations; this one does.
"""
import keras

import layers

WIDTHS = (16, 32, 64, 128)


def endpoints(images, pooling: str = 'avg') -> dict:
    """The CNN on float RGB images (B, H, W, 3) in [0, 255]: `model_output` (B, 128), pooled by
    `pooling` (avg, max, gem: layers.global_pool)."""
    x = images / 127.5 - 1.0
    for stage, width in enumerate(WIDTHS, start=1):
        for layer in (1, 2):
            name = f'small_cnn.stage{stage}.conv{layer}'
            x = keras.layers.Conv2D(width, 3, padding='same', use_bias=False,
                                    kernel_initializer='he_normal', name=name)(x)
            x = layers.BatchNorm(0.9, 1e-5, name=f'{name}.BatchNorm')(x)
            x = keras.layers.ReLU(name=f'{name}.relu')(x)
        if stage < len(WIDTHS):
            x = keras.layers.MaxPooling2D(2, name=f'small_cnn.stage{stage}.pool')(x)
    pooled = layers.global_pool(x, pooling, 'small_cnn.pool')
    return {'model_output': pooled, 'global_pool': pooled}
