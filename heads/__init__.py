"""Embedding heads, one file each, found by name (`--head_name fc1024` imports heads/fc1024.py).

A head module exposes

    endpoints(endpoints: dict, embedding_dim: int) -> dict

taking the dict returned by a net (it reads `model_output`, (B, F)) and returning it extended
with `emb_raw` (B, embedding_dim), the head's output before any normalisation, and `emb`,
the embedding that the loss and embed.py use.
"""
