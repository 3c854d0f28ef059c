"""The `fc1024` head with its embedding L2-normalised onto the unit sphere."""
import keras

from heads import fc1024


def endpoints(endpoints: dict, embedding_dim: int) -> dict:
    """As heads/fc1024.py, then `emb` (B, embedding_dim) = `emb_raw` / ||`emb_raw`||."""
    endpoints = fc1024.endpoints(endpoints, embedding_dim)
    normalize = keras.layers.UnitNormalization(dtype='float32', name='emb_normalize')
    emb = normalize(endpoints['emb_raw'])
    return {**endpoints, 'emb': emb}
