"""Training augmentations beyond crop and flip: random erasing and pad-and-crop, as seeded
stateless TensorFlow ops that the input pipeline calls per image on its threads.

Each takes an explicit seed (shape (2,) int64, as tf.random.stateless_*), so that an image's
augmentation depends only on the run's --seed and the image's position in the stream: the
same on a resumed run, and bit-identical under --deterministic.
"""

# ImageNet's mean colour (0.485, 0.456, 0.406) in [0, 255] RGB: what erased pixels become, so
# that after the net's mean subtraction they are about 0 (Zhong et al.'s choice).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
ERASING_AREA = (0.02, 0.4)  # of the image, as Zhong et al. and Luo et al.
ERASING_ASPECT = (0.3, 1 / 0.3)  # height / width of the erased rectangle
ERASING_ATTEMPTS = 100


def random_erasing(image, seed, probability: float, area=ERASING_AREA, aspect=ERASING_ASPECT,
                   fill=IMAGENET_MEAN):
    """Random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020).

    With `probability`, a rectangle of the image is filled with `fill`: its area a uniform
    share of the image in `area`, its aspect ratio h / w uniform in `aspect`, its size rounded
    to whole pixels, its position uniform among those where it fits. As in the published
    code, up to 100 draws of area and aspect are made and the first that fits (h < H, w < W)
    is taken; if none fits, the image stays as it is. The draws are vectorised (all 100 are
    made, the first fitting one used), so the op has no data-dependent loop.

    Args:
        image: float (H, W, C) in [0, 255].
        seed: (2,) int64 stateless seed.
        probability: p in [0, 1].
        area, aspect: (low, high) ranges; fill: C values.

    Returns:
        The image, erased or not: same shape and dtype.
    """
    import tensorflow as tf
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    draws = tf.random.stateless_uniform((4, ERASING_ATTEMPTS), seed)
    coin = tf.random.stateless_uniform((), tf.random.experimental.stateless_fold_in(seed, 1))
    target = (area[0] + (area[1] - area[0]) * draws[0]) * h_f * w_f
    ratio = aspect[0] + (aspect[1] - aspect[0]) * draws[1]
    heights, widths = tf.round(tf.sqrt(target * ratio)), tf.round(tf.sqrt(target / ratio))
    fits = (heights < h_f) & (widths < w_f) & (heights >= 1) & (widths >= 1)
    first = tf.argmax(tf.cast(fits, tf.int32))  # the first that fits (0 if none does)
    h, w = tf.cast(heights[first], tf.int32), tf.cast(widths[first], tf.int32)
    top = tf.cast(draws[2, first] * tf.cast(height - h + 1, tf.float32), tf.int32)
    left = tf.cast(draws[3, first] * tf.cast(width - w + 1, tf.float32), tf.int32)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    erase = (coin < probability) & tf.reduce_any(fits)
    return tf.where(inside[:, :, None] & erase, tf.constant(fill, image.dtype), image)


def pad_crop(image, pixels: int, seed):
    """Pads `pixels` zeros (black) on every side, then crops the original size at a uniform
    random position (Luo et al.: pad 10, random crop), a shift of up to `pixels` either way.

    Args:
        image: (H, W, C) with a static or dynamic size.
        pixels: the padding, >= 0.
        seed: (2,) int64 stateless seed.

    Returns:
        (H, W, C), the image's dtype.
    """
    import tensorflow as tf
    padded = tf.pad(image, [[pixels, pixels], [pixels, pixels], [0, 0]])
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed)
