"""The Keras layers that nets/ and heads/ share; it imports no script and no core module."""
import functools

import keras
import tensorflow as tf


class BatchNorm(keras.layers.Layer):
    """Batch norm over the last axis with TensorFlow's fused kernel, as slim's batch_norm.

    Keras 3's BatchNormalization computes the moments with separate ops; the fused kernel
    does the forward and the backward pass in one op each, which is what makes our
    ResNet-50 training step faster than plain Keras on CPU (benchmarks/train_speed.py).

    In training mode the output uses the batch's mean and biased variance, and the
    moving averages move towards the batch's mean and *unbiased* variance (what the
    fused kernel returns, and so what slim's fused batch norm stored in its checkpoints):
    moving = decay * moving + (1 - decay) * batch. In inference mode (training False or
    None, or the layer frozen with trainable=False) the moving averages are used.

    Under a tf.distribute strategy with several replicas, `synchronized = True` (train.py
    sets it for --sync_batch_norm) computes the training-mode moments over the whole batch
    of all replicas, so that the output does not depend on how the batch is split; one
    replica, or synchronized False, keeps the fused kernel on the replica's own share.

    Inputs (B, H, W, C) or (B, C); the output has the input's shape and the layer's compute
    dtype (float32, or bfloat16 / float16 under a mixed-precision policy). The weights are
    float32 whatever the policy, named gamma, beta, moving_mean, moving_variance as in slim's
    checkpoints. `center=False` freezes the shift beta at 0 (BNNeck's batch norm): beta is
    still a weight, so that the fused kernel gets its offset and checkpoints keep their names,
    but not a trainable one.
    """

    def __init__(self, decay: float = 0.997, epsilon: float = 1e-5, scale: bool = True,
                 synchronized: bool = False, center: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.decay = decay
        self.epsilon = epsilon
        self.scale = scale
        self.synchronized = synchronized
        self.center = center
        # cuDNN refuses epsilon < 1e-5 and 1e-5 in float32 is just below it; TensorFlow's
        # own wrappers (and so slim) used the same floor. The change is invisible.
        self._kernel_epsilon = max(epsilon, 1.001e-5)

    def build(self, input_shape):
        channels = input_shape[-1]
        # The fused kernel takes half-precision x only with float32 scale, offset and moments
        # (and returns float32 moments): the weights are not autocast to the compute dtype.
        weight = functools.partial(self.add_weight, shape=(channels,), autocast=False)
        if self.scale:
            self.gamma = weight(initializer='ones', name='gamma')
        self.beta = weight(initializer='zeros', trainable=self.center, name='beta')
        # Replicas update the moving averages with the mean of their values (the same values
        # when synchronized); a mirrored variable refuses updates without an aggregation.
        self.moving_mean = weight(initializer='zeros', trainable=False, name='moving_mean',
                                  aggregation='mean')
        self.moving_variance = weight(initializer='ones', trainable=False,
                                      name='moving_variance', aggregation='mean')

    def call(self, inputs, training=None):
        x = tf.convert_to_tensor(inputs)  # Keras has cast it to the compute dtype
        flat = x.shape.rank == 2
        if flat:
            x = x[:, None, None, :]  # (B, C) -> (B, 1, 1, C): the kernel wants 4-D
        elif x.shape.rank != 4:
            raise ValueError(f'{self.name}: expected a 2-D or 4-D input, got {x.shape}')
        gamma = self.gamma if self.scale else tf.ones_like(self.beta)
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        if training and self.trainable and self.synchronized and replicas > 1:
            mean, variance, count = self._global_moments(x)
            y = tf.nn.batch_normalization(tf.cast(x, tf.float32), mean, variance, self.beta,
                                          gamma, self._kernel_epsilon)
            y = tf.cast(y, x.dtype)  # half precision under a mixed-precision policy
            variance *= count / tf.maximum(count - 1.0, 1.0)  # unbiased, as the kernel's
            momentum = 1.0 - self.decay
            self.moving_mean.assign_sub((self.moving_mean - mean) * momentum)
            self.moving_variance.assign_sub((self.moving_variance - variance) * momentum)
        elif training and self.trainable:
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=self.beta, mean=tf.constant([]),
                variance=tf.constant([]), epsilon=self._kernel_epsilon,
                exponential_avg_factor=1.0, data_format='NHWC', is_training=True)
            momentum = 1.0 - self.decay
            self.moving_mean.assign_sub((self.moving_mean - mean) * momentum)
            self.moving_variance.assign_sub((self.moving_variance - variance) * momentum)
        else:
            y, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self._kernel_epsilon,
                exponential_avg_factor=1.0, data_format='NHWC', is_training=False)
        return y[:, 0, 0, :] if flat else y

    def _global_moments(self, x):
        """Mean (C,) and biased variance (C,) of `x` (B, H, W, C) over every replica's batch,
        and the number of values per channel.

        Each replica computes its count, mean and centred sum of squares in float32 (two
        passes, as precise as the fused kernel); one all-reduce gathers them and every
        replica combines them with Chan, Golub and LeVeque's parallel formula (1979):
        M2 = sum_r M2_r + sum_r n_r (mean_r - mean)^2. Sums of x and x^2 instead lose the
        variance to cancellation when the mean is large against the spread (E[x^2] - E[x]^2).
        The all-reduce's gradient is an all-reduce of the gradients, which makes the
        backward pass that of batch norm over the whole batch.
        """
        context = tf.distribute.get_replica_context()
        x = tf.cast(x, tf.float32)  # moments in float32 whatever the policy
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        mean = tf.reduce_mean(x, axis=[0, 1, 2])
        m2 = tf.reduce_sum(tf.square(x - mean), axis=[0, 1, 2])
        own = tf.concat([count[None], mean, m2], 0)  # (1 + 2C,)
        # A gather as an all-reduce of a (replicas, 1 + 2C) tensor, zero but for this
        # replica's row: all_gather fails under MultiWorkerMirroredStrategy (see replicas.py).
        slot = tf.one_hot(context.replica_id_in_sync_group, context.num_replicas_in_sync)
        parts = context.all_reduce(tf.distribute.ReduceOp.SUM, slot[:, None] * own[None])
        channels = x.shape[-1]
        counts, means, m2s = parts[:, :1], parts[:, 1:1 + channels], parts[:, 1 + channels:]
        total = tf.reduce_sum(counts)
        mean = tf.reduce_sum(counts * means, axis=0) / total
        m2 = tf.reduce_sum(m2s, axis=0) + tf.reduce_sum(counts * tf.square(means - mean), axis=0)
        return mean, m2 / total, total

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), 'decay': self.decay, 'epsilon': self.epsilon,
                'scale': self.scale, 'synchronized': self.synchronized, 'center': self.center}


# ----------------------------------------------------------------------------- global pooling
POOLINGS = ('avg', 'max', 'gem')
GEM_EPSILON = 1e-6  # the floor GeM's published code clamps to: x**p needs x > 0 for p's gradient


class GeMPooling(keras.layers.Layer):
    """Generalised-mean pooling (Radenovic, Tolias and Chum, TPAMI 2018), a learnable p.

    y_c = (mean over h, w of max(x_hwc, eps)^p)^(1/p): p = 1 is average pooling, p -> inf max
    pooling. p is one scalar for all channels, starting at 3 as in the paper, trained with the
    net (the weight `p`). It computes in float32 under any mixed-precision policy: x^p of
    bfloat16 values loses most of its digits for p near 3.

    Input (B, H, W, C), output (B, C) float32.
    """

    def __init__(self, p: float = 3.0, epsilon: float = GEM_EPSILON, **kwargs):
        super().__init__(**{'dtype': 'float32', **kwargs})
        self.initial_p = p
        self.epsilon = epsilon

    def build(self, input_shape):
        self.p = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_p),
                                 name='p')

    def call(self, inputs):
        x = tf.maximum(tf.cast(inputs, tf.float32), self.epsilon)
        p = tf.convert_to_tensor(self.p)
        return tf.pow(tf.reduce_mean(tf.pow(x, p), axis=[1, 2]), 1.0 / p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), 'p': self.initial_p, 'epsilon': self.epsilon}


def global_pool(x, pooling: str, name: str):
    """The nets' global pooling of a feature map (B, H, W, C) -> (B, C), by --pooling.

    Args:
        x: Keras tensor (B, H, W, C).
        pooling: `avg` (the 2017 nets), `max` or `gem` (GeMPooling).
        name: the layer's name for `avg` and `max`. GeM's layer is named `gem_pool` whatever
            the net: its weight `p` is not in slim's checkpoints, and a layer in the net's
            scope that a checkpoint lacks would make model.load_tf1_checkpoint refuse it as
            another architecture.

    Raises:
        ValueError: an unknown pooling.
    """
    if pooling == 'avg':
        return keras.layers.GlobalAveragePooling2D(name=name)(x)
    if pooling == 'max':
        return keras.layers.GlobalMaxPooling2D(name=name)(x)
    if pooling == 'gem':
        return GeMPooling(name='gem_pool')(x)
    raise ValueError(f'unknown pooling {pooling!r}; choose from {", ".join(POOLINGS)}')
