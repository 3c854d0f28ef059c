"""Embedding heads, one file each, found by name (`--head_name fc1024` imports heads/fc1024.py).

A head module exposes

    endpoints(endpoints: dict, embedding_dim: int) -> dict

taking the dict returned by a net (it reads `model_output`, (B, F)) and returning it extended
with `emb_raw` (B, embedding_dim), the head's output before any normalisation, and `emb`,
the embedding that the loss and embed.py use.

Under a mixed-precision policy (train.py --mixed_precision) the layers compute in bfloat16 or
float16, but `emb_raw` and `emb` must be float32, as distances and the loss are computed from
them: give the layers that make them `dtype='float32'` (model.build_model checks it).
"""
