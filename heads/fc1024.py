"""The paper's head: a 1024-unit hidden layer with batch norm and ReLU, then a linear map."""
import keras

import layers


def endpoints(endpoints: dict, embedding_dim: int) -> dict:
    """Adds `head_output` (B, 1024) and `emb_raw` = `emb` (B, embedding_dim).

    Layers are named after the 2017 code's slim scopes: `fully_connected` (no bias, as
    batch norm follows), `fully_connected.BatchNorm` and `emb` (orthogonal init; float32
    under any mixed-precision policy).
    """
    x = keras.layers.Dense(1024, use_bias=False, name='fully_connected')(endpoints['model_output'])
    x = layers.BatchNorm(decay=0.9, epsilon=1e-5, name='fully_connected.BatchNorm')(x)
    x = keras.layers.ReLU(name='fully_connected.relu')(x)
    emb = keras.layers.Dense(embedding_dim, kernel_initializer='orthogonal', dtype='float32',
                             name='emb')(x)
    return {**endpoints, 'head_output': x, 'emb_raw': emb, 'emb': emb}
