"""ResNet-50 v1 as slim's resnet_v1_50 (resnet_v1_50.ckpt loads by name): 2048-D features."""
from nets import _resnet_v1


def endpoints(images, last_stride: int = 2, pooling: str = 'avg',
              layout: str = 'slim') -> dict:
    """ResNet-50 v1 on float RGB images (B, H, W, 3) in [0, 255]: `model_output` (B, 2048).

    last_stride (2 or 1), pooling (avg, max, gem) and layout (slim, keras): nets/_resnet_v1.py.
    """
    return _resnet_v1.endpoints(images, 'resnet_v1_50', (3, 4, 6, 3), last_stride, pooling,
                                layout)
