"""MobileNet v1 at depth multiplier 1.0 (slim's mobilenet_v1_1.0_224.ckpt, scope MobilenetV1).

The `_224` names the checkpoint's ImageNet input size; the net takes any H and W.
"""
from nets import _mobilenet_v1


def endpoints(images, pooling: str = 'avg') -> dict:
    """MobileNet v1 on float RGB images (B, H, W, 3) in [0, 255]: `model_output` (B, 1024)."""
    return _mobilenet_v1.endpoints(images, depth_multiplier=1.0, pooling=pooling)
