"""The `direct` head with its embedding L2-normalised onto the unit sphere."""
import keras

from heads import direct


def endpoints(endpoints: dict, embedding_dim: int) -> dict:
    """As heads/direct.py, then `emb` (B, embedding_dim) = `emb_raw` / ||`emb_raw`||."""
    endpoints = direct.endpoints(endpoints, embedding_dim)
    normalize = keras.layers.UnitNormalization(dtype='float32', name='emb_normalize')
    emb = normalize(endpoints['emb_raw'])
    return {**endpoints, 'emb': emb}
