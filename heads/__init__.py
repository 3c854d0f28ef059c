"""Embedding heads, one file each, found by name (`--head_name fc1024` imports heads/fc1024.py).

A head module exposes

    endpoints(endpoints: dict, embedding_dim: int) -> dict

taking the dict returned by a net (it reads `model_output`, (B, F)) and returning it extended
with `emb_raw` (B, embedding_dim), the head's output before any normalisation, and `emb`,
the embedding that embed.py writes and, unless the head says otherwise, the loss trains.
Optionally a head also returns

- `train_emb` (B, embedding_dim): the embedding the metric losses (triplet, center) train,
  when it is not `emb` (heads/bnneck.py: f before its batch norm);
- `logits` (B, num_classes), for the ID loss: then `endpoints` takes a third argument,
  `num_classes` (None: build no classifier), and model.build_model passes the number of
  training identities. Exports and embedding use model.inference_model, without them.

Under a mixed-precision policy (train.py --mixed_precision) the layers compute in bfloat16 or
float16, but `emb_raw`, `emb`, `train_emb` and `logits` must be float32, as distances and the
losses are computed from them: give the layers that make them `dtype='float32'`
(model.build_model checks it).
"""
