"""MobileNet v1 at depth multiplier 0.25 (slim's mobilenet_v1_025, scope MobilenetV1): 256-D
features, small enough for tests and CPU demos.
"""
from nets import _mobilenet_v1


def endpoints(images, pooling: str = 'avg') -> dict:
    """MobileNet v1 0.25 on float RGB images (B, H, W, 3) in [0, 255]: `model_output` (B, 256)."""
    return _mobilenet_v1.endpoints(images, depth_multiplier=0.25, pooling=pooling)
