"""The embedding is a linear map of the pooled features: no hidden layer."""
import keras


def endpoints(endpoints: dict, embedding_dim: int) -> dict:
    """Adds `emb_raw` = `emb` (B, embedding_dim) = Dense(model_output (B, F)).

    The layer is named `emb` (slim scope emb/weights, emb/biases, as the 2017 code); it
    computes in float32 under any mixed-precision policy.
    """
    emb = keras.layers.Dense(embedding_dim, kernel_initializer='orthogonal', dtype='float32',
                             name='emb')(endpoints['model_output'])
    return {**endpoints, 'emb_raw': emb, 'emb': emb}
