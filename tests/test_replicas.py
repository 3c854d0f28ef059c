"""tf.distribute: a PK batch split over 2 replicas trains as on one device; checkpoints move
between the two; multiworker training on 127.0.0.1 stops, resumes and times out cleanly.

TensorFlow fixes its devices when it starts, and the pytest worker's TensorFlow has one CPU
device: the 2-replica computations run in a fresh process (this file run as a script), which
splits the CPU into 2 logical devices first and leaves its results in an .npz file.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NET = ['--model_name', 'small_cnn', '--head_name', 'direct', '--embedding_dim', '8',
       '--net_input_height', '16', '--net_input_width', '8', '--batch_p', '3', '--batch_k', '2',
       '--loading_threads', '1', '--seed', '3', '--learning_rate', '1e-3',
       '--decay_start_iteration', '-1', '--checkpoint_frequency', '0']
LOSSES = ('batch_hard', 'batch_all')
# The bound on the gradients of 1 and 2 replicas, relative to the gradient's norm;
# float32 rounding of this net's forward and backward pass is about 1e-6 (measured 2e-6 at
# most per variable). After 4 Adam steps the weights must agree within 0.5% of how far they
# moved (synchronised batch norm computes its moments as precisely as the fused kernel).
GRADIENT_TOLERANCE = 1e-5
ADAM_TOLERANCE = 0.005


# ----------------------------------------------------------------------------- the script
def twin_models(strategy, head_name: str = 'direct'):
    """The small net with batch norm twice, with equal weights: on one device, and in the
    strategy's scope with synchronised batch norm."""
    import keras

    from model import build_model
    keras.utils.set_random_seed(1)
    single = build_model('small_cnn', head_name, 8)
    with strategy.scope():
        split = build_model('small_cnn', head_name, 8)
    split.set_weights(single.get_weights())
    for layer in split.layers:
        if hasattr(layer, 'synchronized'):
            layer.synchronized = True
    return single, split


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])


def gradients_both_ways(single, split, loss_name: str, strategy) -> dict:
    """Per-anchor losses and summed gradients of one batch on 1 and on 2 replicas."""
    import tensorflow as tf

    import replicas
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (8, 16, 8, 3)), tf.float32)
    pids = tf.constant(np.repeat(np.arange(4), 2), tf.int32)
    grads, out = tf.function(lambda: replicas.replica_gradients(
        single, images, pids, loss_name, 'soft', 'euclidean'))()

    def replica(images, pids):
        # Summed over replicas, as Keras' optimizer sums them before applying.
        grads, out = replicas.replica_gradients(split, images, pids, loss_name, 'soft', 'euclidean')
        return tf.distribute.get_replica_context().all_reduce('sum', grads), out['losses']
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: (images[4 * context.replica_id_in_sync_group:][:4],
                         pids[4 * context.replica_id_in_sync_group:][:4]))
    split_grads, split_losses = tf.function(lambda: strategy.run(replica, halves))()
    first = strategy.experimental_local_results
    return {'losses_1': out['losses'].numpy(), 'losses_2': first(split_losses)[0].numpy(),
            'grad_1': flat([g.numpy() for g in grads]),
            'grad_2': flat([first(g)[0].numpy() for g in split_grads])}


def adam_both_ways(single, split, strategy, steps: int = 3, size: tuple = (16, 8)) -> dict:
    """All weights (moving averages too) before and after `steps` Adam steps (lr 1e-4) of
    replicas.make_train_step on 1 and on 2 replicas, on batches of P=4 K=2 images of `size`."""
    import keras
    import tensorflow as tf

    import replicas
    rng = np.random.default_rng(1)
    batches = [tf.constant(rng.uniform(0, 255, (8, *size, 3)), tf.float32) for _ in range(steps)]
    pids = tf.constant(np.repeat(np.arange(4), 2), tf.int32)
    weights = {'start': flat(single.get_weights())}
    for name, model in (('single', single), ('split', split)):
        with strategy.scope() if name == 'split' else tf.name_scope(name):
            optimizer = keras.optimizers.Adam(learning_rate=1e-4, epsilon=1e-8)
            optimizer.build(model.trainable_variables)
        step = replicas.make_train_step(model, optimizer, 'batch_hard', 'soft', 'euclidean',
                                     strategy=strategy if name == 'split' else None)
        for images in batches:
            step(images, pids)
        weights[name] = flat(model.get_weights())
    return weights


def strong_both_ways(strategy, steps: int = 3) -> dict:
    """As adam_both_ways for the strong baseline's objective (BNNeck and its classifier, ID loss
    with label smoothing, center loss and its centres' update, weight decay, margin 0.3): the
    weights, the centres and the last step's losses on 1 and on 2 replicas."""
    import contextlib

    import keras
    import tensorflow as tf

    import replicas
    from model import build_model
    keras.utils.set_random_seed(1)
    single = build_model('small_cnn', 'bnneck', 8, num_classes=4)
    with strategy.scope():
        split = build_model('small_cnn', 'bnneck', 8, num_classes=4)
    split.set_weights(single.get_weights())
    for layer in split.layers:
        if hasattr(layer, 'synchronized'):
            layer.synchronized = True
    rng = np.random.default_rng(4)
    batches = [tf.constant(rng.uniform(0, 255, (8, 64, 32, 3)), tf.float32) for _ in range(steps)]
    pids = tf.constant(np.repeat(np.arange(4), 2), tf.int32)
    out = {'start': flat(single.get_weights())}
    for name, model in (('single', single), ('split', split)):
        with strategy.scope() if name == 'split' else contextlib.nullcontext():
            optimizer = keras.optimizers.Adam(learning_rate=1e-3, epsilon=1e-8)
            optimizer.build(model.trainable_variables)
            centres = replicas.make_centres(4, 8)
        extras = replicas.Extras(1.0, 0.1, 0.05, 0.5, centres, 5e-4)
        step = replicas.make_train_step(model, optimizer, 'batch_hard', 0.3, 'euclidean',
                                        strategy=strategy if name == 'split' else None,
                                        extras=extras)
        for images in batches:
            last = step(images, pids)
        out[name] = flat(model.get_weights())
        out[f'{name}_centres'] = centres.numpy()
        for key in ('loss', 'id_losses', 'center_losses', 'weight_decay'):
            out[f'{name}_{key}'] = last[key].numpy()
    return out


def moments_both_ways(strategy) -> dict:
    """Synchronised batch norm's moments over 2 replicas of channels whose mean (1000) is large
    against their spread (std 10, 1, 0.1): where sums of x and x^2 cancel (measured with the
    earlier one-pass moments about the moving mean 0: the std 0.1 channel's variance 6.7x
    too large; these: within 1.1e-4)."""
    import tensorflow as tf

    import layers
    rng = np.random.default_rng(2)
    x = (1000 + rng.standard_normal((8, 4, 4, 3)) * [10, 1, 0.1]).astype(np.float32)
    with strategy.scope():
        norm = layers.BatchNorm(synchronized=True)
        norm.build(x.shape)
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: x[4 * context.replica_id_in_sync_group:][:4])
    mean, variance, count = tf.function(
        lambda: strategy.run(lambda part: norm._global_moments(part), (halves,)))()
    first = strategy.experimental_local_results
    return {'x': x, 'mean': first(mean)[0].numpy(), 'variance': first(variance)[0].numpy(),
            'count': first(count)[0].numpy()}


def train_main(*flags) -> int:
    """train.main() on these flags, in this process."""
    import train
    argv = sys.argv
    sys.argv = ['train.py', *map(str, flags)]
    try:
        return train.main()
    finally:
        sys.argv = argv


def compute_on_two_devices(task: str, out: Path, runs: Path, csv: Path) -> None:
    """The script's part: 2 logical CPU devices, then the 2-replica computations of `task`.

    Each process trains with one strategy only: a second strategy that runs collective ops
    in the same process numbers them from the same start, and they clash with the first's.
    """
    import tensorflow as tf

    import common
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    if task == 'resume':  # a run that one device started, resumed on 2 replicas
        assert train_main('--experiment_root', runs / 'single', '--resume') == 0
        return
    data = ['--train_set', csv, '--image_root', csv.parent]
    results = {}
    try:  # refused before any collective op runs
        train_main('--experiment_root', runs / 'odd', *data, *NET, '--distribute', 'mirrored',
                   '--batch_p', '3', '--batch_k', '3', '--train_iterations', '1')
    except common.InputError as e:
        results['odd_batch_error'] = str(e)
    # The comparisons reduce without collective ops, so they can share the process with one
    # train.py run.
    strategy = tf.distribute.MirroredStrategy(
        ['/cpu:0', '/cpu:1'], cross_device_ops=tf.distribute.ReductionToOneDevice())
    single, split = twin_models(strategy)
    for loss_name in LOSSES:
        results.update({f'{loss_name}/{k}': v for k, v in
                        gradients_both_ways(single, split, loss_name, strategy).items()})
    single, split = twin_models(strategy, 'fc1024')  # batch norm in the head too
    results.update({f'adam/{k}': v for k, v in
                    adam_both_ways(single, split, strategy, 4, (128, 64)).items()})
    results.update({f'moments/{k}': v for k, v in moments_both_ways(strategy).items()})
    results.update({f'strong/{k}': v for k, v in strong_both_ways(strategy).items()})
    assert train_main('--experiment_root', runs / 'mirrored', *data, *NET, '--distribute',
                      'mirrored', '--train_iterations', '2') == 0
    np.savez(out, **results)


if __name__ == '__main__':
    compute_on_two_devices(sys.argv[1], *map(Path, sys.argv[2:]))
    sys.exit(0)


# ----------------------------------------------------------------------------- fixtures
def write_images(root: Path, n_ids: int = 4, per_id: int = 3) -> Path:
    """Tiny smooth images of n_ids identities; returns the training CSV."""
    from conftest import write_smooth_images
    fids = [f'images/{pid:04d}_c1s1_{i:06d}.jpg' for pid in range(n_ids) for i in range(per_id)]
    write_smooth_images(root, fids, [(24, 12)] * len(fids))
    csv = root / 'train.csv'
    csv.write_text(''.join(f'{fid[7:11]},{fid}\n' for fid in fids))
    return csv


def run_train(*flags, env=None, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / 'train.py'), *map(str, flags)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope='module')
def csv(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def two_devices(tmp_path_factory, csv):
    """The script's results; `runs` holds its experiment roots. Before it runs, one device
    trains runs/single for 2 iterations, and its args.json is edited to resume under
    --distribute mirrored to 4."""
    runs = tmp_path_factory.mktemp('runs')
    single = runs / 'single'
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:  # in this process: no TensorFlow start-up
        assert train_main('--experiment_root', single, '--train_set', csv, '--image_root',
                          csv.parent, *NET, '--train_iterations', '2') == 0
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    stored = json.loads((single / 'args.json').read_text())
    assert stored['distribute'] == 'none' and stored['sync_batch_norm'] is False
    (single / 'args.json').write_text(json.dumps(
        {**stored, 'distribute': 'mirrored', 'train_iterations': 4}))
    out = runs / 'results.npz'
    tasks = [subprocess.Popen([sys.executable, __file__, task, str(out), str(runs), str(csv)],
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for task in ('compare', 'resume')]
    for task in tasks:
        stderr = task.communicate(timeout=300)[1]
        assert task.returncode == 0, stderr[-3000:]
    return dict(np.load(out)), runs


# ----------------------------------------------------------------------------- 2 replicas
@pytest.mark.slow  # shares the 2-device processes of `two_devices` (~50 s)
@pytest.mark.parametrize('loss_name', LOSSES)
def test_two_replicas_give_one_devices_losses_and_gradients(two_devices, loss_name):
    got = {k.split('/')[1]: v for k, v in two_devices[0].items() if k.startswith(loss_name)}
    np.testing.assert_allclose(got['losses_2'], got['losses_1'], rtol=GRADIENT_TOLERANCE)
    scale = np.linalg.norm(got['grad_1'])
    assert scale > 0
    np.testing.assert_allclose(got['grad_2'], got['grad_1'], rtol=0,
                               atol=GRADIENT_TOLERANCE * scale)
    # A wrong scaling of the replicas' objectives would be off by a factor of 2.
    assert np.linalg.norm(got['grad_2'] - got['grad_1']) < 0.01 * scale


@pytest.mark.slow  # shares the 2-device processes of `two_devices` (~50 s)
def test_adam_steps_on_two_replicas_move_the_weights_alike(two_devices):
    # small_cnn + fc1024 (batch norm in every layer), P=4 K=2 at 128x64, 4 Adam steps at lr
    # 1e-4: measured 4.9e-5 of the update apart (the earlier one-pass moments: 5.1e-5 here,
    # 3.8e-4 on images of pixel values 100-150, where the new moments give 3.5e-5).
    got = {k.split('/')[1]: v for k, v in two_devices[0].items() if k.startswith('adam/')}
    moved = np.linalg.norm(got['single'] - got['start'])
    assert moved > 0
    assert np.linalg.norm(got['split'] - got['single']) < ADAM_TOLERANCE * moved


@pytest.mark.slow  # shares the 2-device processes of `two_devices` (~50 s)
def test_strong_baseline_steps_on_two_replicas_as_on_one(two_devices):
    # The ID loss (each replica its samples' share of the batch mean), the center loss (its
    # share of the sum) and the centres' update (the same on every replica), weight decay (each
    # replica a share): 3 steps of lr 1e-3 agree as the 2017 objective does.
    got = {k.split('/')[1]: v for k, v in two_devices[0].items() if k.startswith('strong/')}
    moved = np.linalg.norm(got['single'] - got['start'])
    assert moved > 0
    assert np.linalg.norm(got['split'] - got['single']) < ADAM_TOLERANCE * moved
    assert np.abs(got['single_centres']).max() > 0
    scale = np.abs(got['single_centres']).max()  # the features' rounding, at their scale
    np.testing.assert_allclose(got['split_centres'], got['single_centres'], rtol=0,
                               atol=1e-3 * scale)
    for key in ('loss', 'id_losses', 'center_losses', 'weight_decay'):
        assert got[f'single_{key}'].shape == got[f'split_{key}'].shape  # the whole batch's
        np.testing.assert_allclose(got[f'split_{key}'], got[f'single_{key}'], rtol=1e-3,
                                   atol=1e-3 * np.abs(got[f'single_{key}']).max())


@pytest.mark.slow  # shares the 2-device processes of `two_devices` (~50 s)
def test_synchronised_moments_are_as_precise_as_two_passes(two_devices):
    got = {k.split('/')[1]: v for k, v in two_devices[0].items() if k.startswith('moments/')}
    x = got['x'].astype(np.float64)
    assert got['count'] == 8 * 4 * 4
    np.testing.assert_allclose(got['mean'], x.mean(axis=(0, 1, 2)), rtol=1e-6)
    # Float32 two-pass: x - mean is exact to about 1000 x 6e-8 = 6e-5, relative 1.2e-3 of the
    # std 0.1 channel's variance; one-pass sums of x^2 (1e6) lose about 0.06 of it (measured:
    # 6.7x the variance).
    np.testing.assert_allclose(got['variance'], x.var(axis=(0, 1, 2)), rtol=1e-2)


@pytest.mark.slow  # shares the 2-device processes of `two_devices` (~50 s)
def test_a_batch_that_does_not_split_is_refused(two_devices):
    message = str(two_devices[0]['odd_batch_error'])
    assert '9 images cannot be split evenly over 2 replicas' in message
    assert '--batch_p can be 2, 4' in message


@pytest.mark.slow  # shares the 2-device processes of `two_devices` (~50 s)
def test_checkpoints_move_between_strategies_and_one_device(two_devices, csv, tmp_path):
    import embed
    import experiment
    runs = two_devices[1]
    mirrored = runs / 'mirrored'
    stored = json.loads((mirrored / 'args.json').read_text())
    assert stored['distribute'] == 'mirrored' and stored['sync_batch_norm'] is True
    assert '--distribute mirrored: 2 replicas' in (mirrored / 'train.log').read_text()
    # Written under the strategy, embedded on one device: trained weights, not the start's.
    embs = {}
    for checkpoint in ('checkpoint-0', 'checkpoint-2'):
        out = tmp_path / f'{checkpoint}.h5'
        embed.main(['--experiment_root', str(mirrored), '--dataset', str(csv), '--quiet',
                    '--checkpoint', checkpoint, '--filename', str(out)])
        embs[checkpoint] = read_emb(out)
    assert np.all(np.isfinite(embs['checkpoint-2']))
    assert np.abs(embs['checkpoint-2'] - embs['checkpoint-0']).max() > 1e-3
    # Written on one device, resumed under the strategy (args.json edited to say so).
    single = runs / 'single'
    log = (single / 'train.log').read_text()
    assert '--distribute mirrored: 2 replicas' in log
    assert re.search(r'resuming from .*checkpoint-2: iteration 3 on', log)
    assert experiment.step_of(experiment.checkpoints_in(single)[-1]) == 4


@pytest.mark.slow  # shares the 2-device processes of `two_devices` (~50 s)
def test_the_log_shows_one_devices_numbers(two_devices):
    # The same seed, data and initial weights on 1 device and on 2 replicas: the log lines of
    # the first two iterations agree, up to the last printed digit of the losses.
    runs = two_devices[1]
    pattern = (r'iter ([12])/2: loss min ([\d.]+) mean ([\d.]+) max ([\d.]+), (top-1 .*), lr')
    lines = [re.findall(pattern, (runs / name / 'train.log').read_text())
             for name in ('single', 'mirrored')]
    assert len(lines[0]) == len(lines[1]) == 2
    for one, two in zip(*lines, strict=True):
        np.testing.assert_allclose(np.float64(two[1:4]), np.float64(one[1:4]), atol=1.5e-3)
        assert two[4] == one[4]  # top-1, precision@(K-1), active triplets


def read_emb(path):
    import h5py
    with h5py.File(path, 'r') as f:
        return f['emb'][()]


# ----------------------------------------------------------------------------- multiworker
def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def worker_env(ports: list[int], index: int, tmp: Path) -> dict:
    """The environment of worker `index`: TF_CONFIG, and TMPDIR to see its temporary files."""
    cluster = {'worker': [f'127.0.0.1:{port}' for port in ports]}
    return {**os.environ, 'TMPDIR': str(tmp),
            'TF_CONFIG': json.dumps({'cluster': cluster, 'task': {'type': 'worker',
                                                                  'index': index}})}


def start_workers(roots: list[Path], flags: list, tmp: Path, logs: Path) -> list:
    """One train.py per root, on 127.0.0.1 ports of their own; stderr into logs/<index>.txt."""
    ports = free_ports(len(roots))
    logs.mkdir(exist_ok=True)
    return [subprocess.Popen(
        [sys.executable, str(ROOT / 'train.py'), '--experiment_root', str(root),
         *map(str, flags), '--distribute', 'multiworker', '--cluster_timeout', '60'],
        cwd=ROOT, env=worker_env(ports, index, tmp), stderr=open(logs / f'{index}.txt', 'w'))
        for index, root in enumerate(roots)]


def wait_for(path: Path, text: str, processes: list, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while text not in path.read_text():
        assert all(p.poll() is None for p in processes), path.read_text()[-3000:]
        assert time.time() < deadline, path.read_text()[-3000:]
        time.sleep(0.05)


def finish(processes: list, logs: Path) -> list[str]:
    for process in processes:
        process.wait(timeout=120)
    texts = [(logs / f'{index}.txt').read_text() for index in range(len(processes))]
    for process, text in zip(processes, texts, strict=True):
        assert process.returncode == 0, text[-3000:]
    return texts


def checkpoint_values(path: Path) -> dict:
    import tensorflow as tf
    return {name: tf.train.load_variable(str(path), name)
            for name, _ in tf.train.list_variables(str(path))
            if 'ATTRIBUTES' in name and not name.startswith('save_counter')}  # saves per run


@pytest.mark.slow
def test_multiworker_stops_resumes_and_matches_an_uninterrupted_run(csv, tmp_path):
    data = ['--train_set', csv, '--image_root', csv.parent, *NET, '--train_iterations', '16']
    tmp = tmp_path / 'tmp'
    tmp.mkdir()
    whole, stopped, elsewhere = tmp_path / 'whole', tmp_path / 'stopped', tmp_path / 'elsewhere'
    uninterrupted = start_workers([whole, whole], data, tmp, tmp_path / 'whole_logs')
    # The second worker is given another root: it must not even create it.
    interrupted = start_workers([stopped, elsewhere], data, tmp, tmp_path / 'logs')
    wait_for(tmp_path / 'logs' / '0.txt', 'iter 2/16', interrupted)
    for process in interrupted:
        process.send_signal(signal.SIGINT)
    texts = finish(interrupted, tmp_path / 'logs')
    ends = [re.findall(r'stopped after iteration (\d+) of 16', text) for text in texts]
    assert ends[0] and ends[0] == ends[1], ends  # both stop after the same iteration
    assert int(ends[0][0]) < 16
    assert not elsewhere.exists()

    resumed = start_workers([stopped, stopped], ['--resume'], tmp, tmp_path / 'logs')
    texts = finish(resumed, tmp_path / 'logs')
    assert all('training done: 16 iterations' in text for text in texts)
    assert f'iter {int(ends[0][0]) + 1}/16' in texts[0]
    finish(uninterrupted, tmp_path / 'whole_logs')

    # Only the chief wrote into the roots: TensorBoard files name their writer's PID.
    chiefs = {str(uninterrupted[0].pid), str(interrupted[0].pid), str(resumed[0].pid)}
    writers = {re.search(r'\.(\d+)\.\d+\.v2$', p.name)[1] for root in (whole, stopped)
               for p in root.glob('events.out.tfevents.*')}
    assert writers and writers <= chiefs, (writers, chiefs)
    assert list(tmp.iterdir()) == []  # the other worker's checkpoints are gone
    got = checkpoint_values(stopped / 'checkpoint-16')
    want = checkpoint_values(whole / 'checkpoint-16')
    assert got.keys() == want.keys()
    print('bit-equal to the uninterrupted run:',
          all(np.array_equal(got[name], value) for name, value in want.items()))
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0,
                                   atol=1e-5 * max(1.0, np.abs(value).max()), err_msg=name)


@pytest.mark.slow
def test_a_worker_alone_gives_up_naming_the_cluster(csv, tmp_path):
    ports = free_ports(2)
    root = tmp_path / 'run'
    done = run_train('--experiment_root', root, '--train_set', csv, '--image_root', csv.parent,
                     *NET, '--distribute', 'multiworker', '--cluster_timeout', '2',
                     env=worker_env(ports, 0, tmp_path), timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    # TensorFlow's own shutdown messages may follow: find ours.
    ours = [line for line in done.stderr.splitlines() if line.startswith('train.py: error:')]
    assert len(ours) == 1, done.stderr[-3000:]
    last = ours[0]
    assert last.startswith('train.py: error: --distribute multiworker: not all workers')
    assert f'127.0.0.1:{ports[1]}' in last and '--cluster_timeout 2 s' in last
    assert not root.exists()


def test_multiworker_without_tf_config_is_refused(csv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'TF_CONFIG'}
    done = run_train('--experiment_root', tmp_path / 'run', '--train_set', csv, '--image_root',
                     csv.parent, *NET, '--distribute', 'multiworker', env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if 'TF_CONFIG' in line]
