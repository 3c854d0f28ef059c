"""Backbones, one file each, found by name (`--model_name resnet_v1_50`: nets/resnet_v1_50.py).

A net module exposes

    endpoints(images) -> dict

taking a Keras tensor of float32 RGB images (B, H, W, 3) with values in [0, 255] and returning
a dict of named Keras tensors that holds at least `model_output`, the globally pooled
features (B, F). The module does its own preprocessing (mean subtraction, scaling), so that
every caller feeds the same images. Files starting with `_` hold shared code, not nets.

Options are keyword arguments with defaults that build the 2017 net, and a net takes only those
it has (model.build_model refuses an option a net lacks, naming it): `pooling` (avg, max, gem:
layers.global_pool, --pooling), `last_stride` (2 or 1, --last_stride) and `layout` (slim or
keras, --resnet_layout); the ResNets take all three, the other nets `pooling`.
"""
