"""Ways to combine the test-time augmentations of an image into one embedding, one file each,
found by name (`embed.py --aggregator mean` imports aggregators/mean.py).

An aggregator module exposes

    aggregate(emb_aug) -> emb       emb_aug: (A, N, D) float, emb: (N, D) float32

where row i of `emb` depends on row i of each augmentation only, and not on their order. NumPy
only, so that it also serves stored `emb_aug` datasets without TensorFlow.
"""
