"""Where a training step runs on several replicas: tf.distribute strategies, the batch
gathered across replicas, and each replica's gradients.

One PK batch is split into equal consecutive parts, one per replica (GPUs of a machine, or
machines of a cluster with one process each). Each replica embeds its part; the embeddings and
identities of all replicas are gathered, so that batch-hard mining sees the whole batch; each
replica takes the loss of its own anchors against it, scaled so that the summed replica
gradients equal the one-device gradient of the whole batch. The strong baseline's ID and
center losses are per sample: each replica takes its own samples' share of them.
"""
import argparse
import functools
import json
import os
from typing import NamedTuple

import common
import loss

DISTRIBUTE = ('none', 'mirrored', 'multiworker')


class Extras(NamedTuple):
    """The objective's terms beside the triplet loss (loss.add_flags); the defaults add none,
    and the step is then exactly the 2017 one."""
    id_weight: float = 0.0
    label_smoothing: float = 0.0
    center_weight: float = 0.0
    center_lr: float = 0.5
    centres: object = None  # (N, D) tf.Variable, updated in the step (center_weight > 0)
    weight_decay: float = 0.0
    decay_all: bool = False  # weight decay on every trained variable, not only the kernels

    def on(self) -> bool:
        """True if any term is switched on."""
        return bool(self.id_weight or self.center_weight or self.weight_decay)


NO_EXTRAS = Extras()


def extras_of(args: argparse.Namespace, centres=None) -> Extras:
    """The Extras of train.py's flags; `centres` from make_centres when the center loss is on."""
    return Extras(args.id_loss_weight, args.label_smoothing, args.center_loss_weight,
                  args.center_lr, centres, args.weight_decay,
                  getattr(args, 'weight_decay_all', False))


def make_centres(classes: int, dim: int):
    """The center loss's centres (classes, D), zeros: a variable that every replica updates
    alike (from the gathered batch), so the first replica's value is taken. Create it in the
    strategy's scope."""
    import tensorflow as tf
    return tf.Variable(tf.zeros((classes, dim)), trainable=False, name='centres',
                       synchronization=tf.VariableSynchronization.ON_WRITE,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def add_flags(group) -> None:
    """Adds train.py's flags of training on several devices to an argparse group."""
    group.add_argument('--distribute', default='none', choices=DISTRIBUTE,
                       help='none: one device. mirrored: all GPUs of this machine (else its CPU '
                             'devices). multiworker: one process per machine, the cluster and this '
                             'process\'s place in it given by the TF_CONFIG environment variable. '
                             'The PK batch is split over all replicas; the loss is that of the '
                             'whole batch.')
    group.add_argument('--sync_batch_norm', action=argparse.BooleanOptionalAction, default=None,
                       help='Batch norm statistics over the whole batch of all replicas, so that '
                             'training does not depend on how the batch is split; default: on with '
                             '--distribute mirrored or multiworker.')
    group.add_argument('--cluster_timeout', default=90, type=common.positive_float,
                       help='With --distribute multiworker: seconds to wait for every worker of '
                             'TF_CONFIG to connect before giving up.')


def cluster_task(args: argparse.Namespace) -> tuple[list[str], int]:
    """The workers' addresses and this process's index among them, from TF_CONFIG.

    Read before TensorFlow starts, to know whether this process is the chief (index 0),
    the one that writes into the experiment root. Without --distribute multiworker: ([], 0).

    Raises:
        common.InputError: TF_CONFIG is missing or not of the form TensorFlow expects.
    """
    if args.distribute != 'multiworker':
        return [], 0
    example = ('{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": '
               '"worker", "index": 0}}')
    try:
        config = json.loads(os.environ['TF_CONFIG'])
        workers = [str(address) for address in config['cluster']['worker']]
        task = config['task']
        index = int(task['index'])
        kind = task['type']
    except (KeyError, TypeError, ValueError) as e:
        raise common.InputError(f'--distribute multiworker needs the environment variable '
                                f'TF_CONFIG={example!r} (problem: {e!r})') from None
    if set(config['cluster']) != {'worker'} or kind != 'worker' or not 0 <= index < len(workers):
        raise common.InputError(f'TF_CONFIG {os.environ["TF_CONFIG"]!r}: expected only '
                                f'"worker" tasks and an index below their number, as in {example}')
    return workers, index


def make_strategy(args: argparse.Namespace, workers: list[str]):
    """The tf.distribute strategy of --distribute, or None for one device.

    Must run before any other TensorFlow op: MultiWorkerMirroredStrategy configures the
    runtime's collective ops and its gRPC server when it is created.

    Raises:
        common.InputError: the other workers did not all connect within --cluster_timeout.
    """
    import tensorflow as tf
    if args.distribute == 'none':
        return None
    if args.distribute == 'mirrored':
        # MirroredStrategy() takes the GPUs, or only the first CPU device when there are none;
        # all CPU devices instead lets the tests split a batch over logical CPUs.
        gpus = tf.config.list_logical_devices('GPU')
        return tf.distribute.MirroredStrategy(
            [d.name for d in gpus or tf.config.list_logical_devices('CPU')])
    # With TensorFlow's defaults a worker waits for the others for ever (and ignores SIGTERM
    # meanwhile); a registration deadline with a barrier makes every worker give up alike.
    # The strategy keeps a coordination service configured before it is created.
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context
    context.context().configure_coordination_service(
        service_type='standalone', service_leader='/job:worker/replica:0/task:0',
        cluster_register_timeout_in_ms=int(args.cluster_timeout * 1000),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name='worker',
                                                                 num_tasks=len(workers))])
    context.context().coordination_service.cluster_register_with_barrier = True
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (tf.errors.OpError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise common.InputError(f'--distribute multiworker: not all workers of TF_CONFIG '
                                f'({", ".join(workers)}) connected within --cluster_timeout '
                                f'{args.cluster_timeout:g} s ({first})') from None


def log_devices(strategy, args: argparse.Namespace, log) -> None:
    """Logs the replicas of `strategy` and this process's place among the workers; one
    device (None) says nothing."""
    if strategy is None:
        return
    workers, worker = cluster_task(args)
    log.info('--distribute %s: %d replicas (%s)%s', args.distribute,
             strategy.num_replicas_in_sync, ', '.join(strategy.extended.worker_devices),
             f', worker {worker} of {len(workers)}' if workers else '')


def check_split(strategy, batch_p: int, batch_k: int) -> None:
    """Refuses a PK batch that the strategy's replicas cannot share in equal parts.

    Raises:
        common.InputError: naming the --batch_p values that would split with this --batch_k.
    """
    count = strategy.num_replicas_in_sync
    batch = batch_p * batch_k
    if batch % count:
        fits = [p for p in range(2, 4 * batch_p) if p * batch_k % count == 0]
        raise common.InputError(f'--batch_p {batch_p} x --batch_k {batch_k} = {batch} images '
                                f'cannot be split evenly over {count} replicas; with this '
                                f'--batch_k, --batch_p can be {", ".join(map(str, fits[:5]))}, '
                                '...')


def chief_value(strategy, value: int) -> int:
    """The chief's `value` (its replica 0's), on every worker: e.g. a seed each one drew."""
    import tensorflow as tf

    def mine(value):
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return tf.where(first, value, tf.zeros_like(value))
    shares = strategy.run(mine, (tf.constant(value, tf.int64),))
    return int(strategy.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None).numpy())


def gather_replicas(context, value):
    """All replicas' `value` (b, ...), concatenated in replica order: (replicas * b, ...).

    What ReplicaContext.all_gather does, as an all-reduce of a (replicas, b, ...) tensor that
    is zero but for this replica's slot: all_gather of the step's embeddings fails while
    tracing under MultiWorkerMirroredStrategy with one device per worker ("destinations can
    not be empty": TensorFlow 2.21 gathers to the input tensor's device, unset in the graph).
    The gradient is the same as all_gather's: the all-reduce (sum) of the replicas'
    gradients, of which each keeps its own slot.
    """
    import tensorflow as tf
    slot = tf.one_hot(context.replica_id_in_sync_group, context.num_replicas_in_sync,
                      dtype=value.dtype)  # (replicas,)
    spread = slot[(slice(None),) + (None,) * value.shape.rank] * value[None]
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, spread)
    return tf.reshape(total, tf.concat([[-1], tf.shape(value)[1:]], 0))


def replica_gradients(model, images, pids, loss_name: str, margin, metric: str, optimizer=None,
                      extras: Extras = NO_EXTRAS):
    """One replica's gradients of the loss, and what the log reports about the whole batch.

    Runs in a replica context (or without a strategy). The replicas' gradients sum to the
    gradient of the batch's mean loss (see make_train_step): the sum that Keras' optimizer
    applies.

    Args:
        images: (b, H, W, 3) this replica's share of the batch; pids: (b,) its identities.
        loss_name, margin, metric: as for make_train_step.
        optimizer: its scale_loss scales the objective (float16: the dynamic loss scale).
        extras: the ID and center losses and weight decay, added to the objective.

    Returns:
        (grads, out): grads of model.trainable_variables; out with `loss` () (the whole
        objective), `losses` (B,) (the triplet loss), `emb` (B, D) (what the triplet loss
        sees: the head's `train_emb` if it has one), `dists` (B, B), `pids` (B,),
        loss.batch_metrics of the whole batch, and with extras `id_losses` (B,),
        `center_losses` (B,), `weight_decay` ().
    """
    import tensorflow as tf
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    with tf.GradientTape() as tape:
        endpoints = model(images, training=True)
        own_emb = endpoints.get('train_emb', endpoints['emb'])  # (b, D)
        emb, all_pids = own_emb, pids
        if replicas > 1:
            emb = gather_replicas(context, own_emb)  # (B, D), replica by replica
            all_pids = gather_replicas(context, pids)
        dists = loss.cdist(emb, emb, metric)
        losses = getattr(loss, loss_name)(dists, all_pids, margin)
        total = objective = tf.reduce_mean(losses)
        if replicas > 1:
            own = tf.shape(own_emb)[0]
            first = context.replica_id_in_sync_group * own
            objective = tf.reduce_sum(losses[first:first + own]) / tf.cast(
                tf.shape(losses)[0], losses.dtype)
        if model.losses:  # weight decay, if a net or head asks for it
            total += tf.add_n(model.losses)
            objective += tf.add_n(model.losses) / replicas
        parts = {}
        if extras.on():
            terms, parts = extra_terms(model, endpoints, own_emb, pids, tf.shape(losses)[0],
                                       extras, context)
            total += terms['total']
            objective += terms['own']
        scaled = optimizer.scale_loss(objective) if optimizer else objective  # float16
    grads = tape.gradient(scaled, model.trainable_variables)
    return grads, {'loss': total, 'losses': losses, 'emb': emb, 'dists': dists,
                   'pids': all_pids, **loss.batch_metrics(dists, all_pids, losses), **parts}


def extra_terms(model, endpoints: dict, own_emb, pids, batch, extras: Extras, context):
    """The ID loss, center loss and weight decay of one replica's samples.

    Per-sample losses enter the objective as this replica's share of the batch's: the ID loss
    as sum / B (its batch mean), the center loss as its sum (the formula is a sum over the
    batch), weight decay divided by the replicas (every replica adds it).

    Returns:
        ({'own': this replica's share, 'total': the whole batch's value}, parts for `out`:
        `id_losses` (B,), `center_losses` (B,), `weight_decay` (), as far as switched on).
    """
    import tensorflow as tf
    replicas = context.num_replicas_in_sync

    def whole(values):  # (b,) -> (B,)
        return gather_replicas(context, values) if replicas > 1 else values
    own = total = 0.0
    parts = {}
    if extras.id_weight:
        id_losses = loss.id_loss(endpoints['logits'], pids, extras.label_smoothing)  # (b,)
        own += extras.id_weight * tf.reduce_sum(id_losses) / tf.cast(batch, id_losses.dtype)
        parts['id_losses'] = whole(id_losses)
        total += extras.id_weight * tf.reduce_mean(parts['id_losses'])
    if extras.center_weight:
        center_losses = loss.center_loss(own_emb, pids, extras.centres)  # (b,)
        own += extras.center_weight * tf.reduce_sum(center_losses)
        parts['center_losses'] = whole(center_losses)
        total += extras.center_weight * tf.reduce_sum(parts['center_losses'])
    if extras.weight_decay:
        kernels = [v for v in model.trainable_variables
                   if extras.decay_all or v.path.endswith('kernel')]
        decay = 0.5 * extras.weight_decay * tf.add_n([tf.reduce_sum(tf.square(k))
                                                      for k in kernels])
        own += decay / replicas
        parts['weight_decay'] = decay
        total += decay
    return {'own': own, 'total': total}, parts


def update(model, optimizer, loss_name: str, margin, metric: str, extras: Extras, images, pids,
           stop):
    """One replica's part of a training step: its gradients, the checks that every replica
    agrees on (non-finite gradients anywhere, a stop asked of any worker), and the update
    (with the center loss, also that of the centres, from the whole batch's features).

    Returns:
        replica_gradients' `out` with `grads_finite` () and `stop` () bool added.
    """
    import keras
    import tensorflow as tf
    context = tf.distribute.get_replica_context()
    grads, out = replica_gradients(model, images, pids, loss_name, margin, metric, optimizer,
                                   extras)
    nonfinite = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.int32))
                          for g in grads])
    if context.num_replicas_in_sync > 1:
        # Every replica stops on any replica's NaN or any worker's signal: one all-reduce.
        flags = tf.stack([nonfinite, tf.cast(stop, tf.int32)])
        nonfinite, stop = tf.unstack(context.all_reduce(tf.distribute.ReduceOp.SUM, flags))
    grads_finite = nonfinite == 0
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # An overflow of the scaled loss: the optimizer skips the step and halves the scale;
        # only at scale 1 is it a reason to stop.
        grads_finite |= optimizer.dynamic_scale > 1
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    if extras.center_weight:  # after the loss read them; every replica computes the same
        extras.centres.assign(loss.center_update(out['emb'], out['pids'], extras.centres,
                                                 extras.center_lr))
    return {**out, 'grads_finite': grads_finite, 'stop': tf.cast(stop, tf.bool)}


def make_train_step(model, optimizer, loss_name: str, margin, metric: str, jit: bool = False,
                    strategy=None, worker: int = 0, extras: Extras = NO_EXTRAS):
    """The compiled training step: one Adam update on a PK batch.

    Under a strategy the batch is split over the replicas, each embeds its share, the
    embeddings and identities of all replicas are gathered, and each replica takes the loss
    of its own anchors against the whole batch. The gather's gradient sums the replicas'
    gradients of the gathered embeddings, and the optimizer sums the replicas' weight
    gradients: so each replica's objective is its anchors' share of the batch mean, and the
    update equals that of one device on the whole batch.

    Args:
        model: from model.build_model (built in the strategy's scope); `emb` is trained.
        optimizer: a Keras optimizer, built on model.trainable_variables.
        loss_name: a name in loss.LOSSES. margin: a float, 'soft' or 'none'. metric: loss.METRICS.
        jit: compile with XLA.
        strategy: a tf.distribute strategy from make_strategy, or None for one device.
        worker: this process's index among the workers (multiworker): its images are the
            worker'th of equal consecutive parts of the batch.
        extras: the objective's terms beside the triplet loss (Extras); none by default.

    Returns:
        step(images (b, H, W, 3) float32 in [0, 255], pids (b,) int, stop=False) -> dict with
        `loss` () (the optimised mean), `losses` (B,), `emb` (B, D), `dists` (B, B),
        `grads_finite` () bool, `stop` () bool (true if any worker's `stop` was), the
        entries of loss.batch_metrics and those of the extras (replica_gradients), all of the
        whole batch (B = P*K); b = B / workers.
    """
    import tensorflow as tf
    replica_step = functools.partial(update, model, optimizer, loss_name, margin, metric, extras)

    if strategy is None:
        one_device = tf.function(replica_step, jit_compile=jit)
        return lambda images, pids, stop=False: one_device(images, pids, tf.constant(stop))

    local = len(strategy.extended.worker_devices)  # this worker's replicas
    # A tf.function inside strategy.run fails under MultiWorkerMirroredStrategy ("destinations
    # can not be empty"): only --jit needs one there, to compile each replica's step.
    replica_fn = tf.function(replica_step, jit_compile=True) if jit else replica_step
    run = tf.function(lambda images, pids, stop: strategy.run(replica_fn, (images, pids, stop)))

    def step(images, pids, stop=False):
        share = len(images) // local

        def part(values):
            def of_replica(context):
                index = context.replica_id_in_sync_group - worker * local
                return values[index * share:(index + 1) * share]
            return strategy.experimental_distribute_values_from_function(of_replica)
        out = run(part(images), part(pids), tf.constant(stop))
        return {name: strategy.experimental_local_results(value)[0]
                for name, value in out.items()}
    return step
