"""BNNeck (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification",
CVPR-W 2019): the metric losses see the pooled feature f, the ID loss sees a classifier on the
batch norm of f, and inference uses BN(f).

As the paper's code: the batch norm's shift is frozen at 0 (a learned shift would move every
feature alike and is useless to the classifier's bias-free hyperplanes through the origin), the
classifier has no bias and starts from N(0, 0.001^2) weights, momentum 0.1 (our decay 0.9),
epsilon 1e-5. Unlike it, f may be an fc to --embedding_dim: with --embedding_dim equal to the
backbone's channels (2048 for the ResNets) f is the pooled feature itself, as in the paper.
"""
import keras

import layers


def endpoints(endpoints: dict, embedding_dim: int, num_classes: int | None = None) -> dict:
    """Adds `train_emb` = f (B, embedding_dim), `emb_raw` = `emb` = BN(f) and, with
    `num_classes`, `logits` (B, num_classes) of the classifier on BN(f).

    BN(f) is the embedding that embed.py and export.py write: the batch norm is part of the
    head, not a normalisation onto a sphere, so `emb_raw` is `emb`. Layers: `bnneck.fc` (only
    when embedding_dim differs from the features' size; no bias, batch norm follows),
    `bnneck.BatchNorm`, `bnneck.classifier`; all compute in float32 under a mixed policy.
    """
    f = endpoints['model_output']
    if f.shape[-1] != embedding_dim:
        f = keras.layers.Dense(embedding_dim, use_bias=False, dtype='float32',
                               name='bnneck.fc')(f)
    else:  # the losses are computed from f in float32 whatever the policy
        f = keras.layers.Identity(dtype='float32', name='bnneck.feature')(f)
    emb = layers.BatchNorm(decay=0.9, epsilon=1e-5, center=False, dtype='float32',
                           name='bnneck.BatchNorm')(f)
    out = {**endpoints, 'train_emb': f, 'emb_raw': emb, 'emb': emb}
    if num_classes is not None:
        out['logits'] = keras.layers.Dense(
            num_classes, use_bias=False, dtype='float32', name='bnneck.classifier',
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))(emb)
    return out
