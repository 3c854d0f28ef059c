"""train.py: the learning rate, and the CLI run as a real subprocess
(args.json, checkpoints, logs, refusals, bad data, SIGINT/SIGTERM then --resume, learning)."""
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import common
import experiment
from model import build_model, slim_name
import loss
import reporting
import schedule
import train
from conftest import ROOT, file_size_limit, run_read_only, write_dataset

TINY = ['--model_name', 'mobilenet_v1_0_25', '--head_name', 'direct', '--embedding_dim', '8',
        '--batch_p', '4', '--batch_k', '3', '--net_input_height', '32', '--net_input_width', '16',
        '--pre_crop_height', '40', '--pre_crop_width', '20', '--crop_augment', '--flip_augment',
        '--loading_threads', '2', '--seed', '5', '--learning_rate', '1e-3']
RUN = ['--train_iterations', '20', '--decay_start_iteration', '15', '--checkpoint_frequency',
       '5', '--detailed_logs', '--beta1_after_decay', '0.5', '--deterministic']


# ----------------------------------------------------------------------------- helpers
def run_train(*flags, timeout=240):
    return subprocess.run([sys.executable, str(ROOT / 'train.py'), *map(str, flags)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def train_in_process(monkeypatch, *flags) -> int:
    """train.main() in this process (no TensorFlow start-up), leaving the signal handlers as
    they were."""
    monkeypatch.setattr(sys, 'argv', ['train.py', *map(str, flags)])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        return train.main()
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


def stored_step(path):
    return int(tf.train.load_variable(path, 'step/.ATTRIBUTES/VARIABLE_VALUE'))


def checkpoint_steps(root):
    return [experiment.step_of(name) for name in experiment.checkpoints_in(root)]


def pid_of(fids):
    return np.array([fid.split('/')[-1].split('_')[0] for fid in fids])


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    return write_dataset(root, n_ids=13, per_id=5, noise=4), root


@pytest.fixture(scope='module')
def slim_backbone(tmp_path_factory, write_tf1_checkpoint):
    """A slim-style V1 ImageNet checkpoint of the tiny net's backbone (with the 1001-class
    logits that the model lacks): (path, {slim name: value})."""
    keras.utils.set_random_seed(99)  # not the runs' seed: loaded weights differ from their own
    model = build_model('mobilenet_v1_0_25', 'direct', 8)
    backbone = {slim_name(layer, v): v.numpy() for layer in model.layers
                for v in layer.weights if slim_name(layer, v).startswith('MobilenetV1/')}
    assert backbone, 'no backbone variables found by slim name'
    logits = {'MobilenetV1/Logits/Conv2d_1c_1x1/weights': np.zeros((1, 1, 256, 1001), np.float32)}
    path = write_tf1_checkpoint(tmp_path_factory.mktemp('slim') / 'mobilenet.ckpt',
                                {**backbone, **logits}, 'V1')
    return path, backbone


@pytest.fixture(scope='module')
def full_run(dataset, slim_backbone, tmp_path_factory):
    """One uninterrupted run, from a slim checkpoint, that several tests inspect."""
    csv, images = dataset
    root = tmp_path_factory.mktemp('runs') / 'full'
    result = run_train('--train_set', csv, '--image_root', images, '--experiment_root', root,
                       *TINY, *RUN, '--initial_checkpoint', slim_backbone[0])
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


# ----------------------------------------------------------------------------- units
def test_learning_rate_schedule():
    base, start, total = 3e-4, 150, 250
    rates = np.array([schedule.learning_rate(i, base, start, total) for i in range(total + 1)])
    assert np.all(rates[:start + 1] == base)
    assert rates[total] == pytest.approx(0.001 * base)
    ratios = rates[start + 1:] / rates[start:-1]
    np.testing.assert_allclose(ratios, 0.001 ** (1 / (total - start)))  # exponential
    assert all(schedule.learning_rate(i, base, -1, total) == base for i in range(total))
    assert all(schedule.learning_rate(i, base, total, total) == base for i in range(total))


def test_given_flags():
    assert experiment.given_flags(['--resume', '--batch_p=3', '--seed', '4', 'x']) == {
        'resume', 'batch_p', 'seed'}


def test_keep_checkpoints_prunes_the_oldest_also_in_a_resumed_run(tmp_path):
    weights, slots = tf.Variable([1.0]), tf.Variable([2.0])  # stand-ins of model and Adam

    def save_all(keep, steps):
        step, manager = experiment.training_checkpoint(tmp_path, weights, slots, keep)
        for done in steps:
            step.assign(done)
            manager.save(checkpoint_number=done)
    save_all(2, [0, 5, 10])
    assert checkpoint_steps(tmp_path) == [5, 10]
    save_all(2, [15])  # a new manager, as a resumed run has: it prunes the earlier run's too
    assert checkpoint_steps(tmp_path) == [10, 15]
    assert stored_step(tf.train.latest_checkpoint(str(tmp_path))) == 15
    save_all(0, [20, 25, 30])  # 0: all kept
    assert checkpoint_steps(tmp_path) == [10, 15, 20, 25, 30]


# ----------------------------------------------------------------------------- the CLI
def test_args_json_holds_every_argument(full_run, dataset):
    root, _ = full_run
    text = (root / 'args.json').read_text()
    stored = json.loads(text)
    assert text == json.dumps(stored, sort_keys=True, indent=2) + '\n'
    assert set(stored) == {action.dest for action in train.parser._actions} - {'help'} | {
        'num_classes'}  # not a flag: the classifier's size (None: no classifier)
    assert stored['num_classes'] is None
    given = dict(zip(TINY[::2], TINY[1::2], strict=False))
    assert stored['model_name'] == given['--model_name']
    assert stored['embedding_dim'] == int(given['--embedding_dim'])
    assert stored['batch_p'] == 4 and stored['batch_k'] == 3 and stored['seed'] == 5
    assert stored['crop_augment'] is True and stored['flip_augment'] is True
    assert stored['margin'] == 'soft' and stored['learning_rate'] == 1e-3
    assert stored['train_set'] == str(dataset[0]) and stored['resume'] is False


def test_checkpoints_logs_and_summaries(full_run):
    root, result = full_run
    assert checkpoint_steps(root) == [0, 5, 10, 15, 20]
    latest = tf.train.latest_checkpoint(str(root))
    assert latest.endswith('checkpoint-20') and stored_step(latest) == 20
    # embed.py's way of loading: the model alone.
    model = build_model('mobilenet_v1_0_25', 'direct', 8)
    restored = tf.train.Checkpoint(model=model).restore(latest)
    restored.expect_partial().assert_existing_objects_matched()
    trained = [v.numpy() for v in model.trainable_variables]
    tf.train.Checkpoint(model=model).restore(str(root / 'checkpoint-0')).expect_partial()
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(trained, model.trainable_variables,
                                                             strict=True))
    log = (root / 'train.log').read_text()
    assert 'iter 20/20: loss min' in log and 'prec@2' in log and 'ETA' in log
    assert 'iter 1/20' in result.stderr  # the console too
    assert log.count("Adam's beta1 is now 0.5") == 1
    assert log.index("beta1 is now") < log.index('iter 16/20') and 'iter 15/20' in log

    tags, rates = set(), {}
    for event_file in root.glob('events.out.tfevents.*'):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                tags.add(value.tag)
                if value.tag == 'learning_rate':
                    rates[event.step] = float(tf.make_ndarray(value.tensor))
    assert {'loss', 'batch/top1', 'batch/prec_at_2', 'batch/active_count', 'learning_rate',
            'seconds_per_iteration', 'dists/positive', 'dists/negative', 'emb_norm'} <= tags
    assert sorted(rates) == list(range(1, 21))
    for step, rate in rates.items():
        assert rate == pytest.approx(schedule.learning_rate(step - 1, 1e-3, 15, 20), rel=1e-6)


def test_detailed_logs(full_run, dataset):
    root, _ = full_run
    emb = np.load(root / 'detailed_emb.npy', mmap_mode='r')
    losses = np.load(root / 'detailed_loss.npy', mmap_mode='r')
    fids = np.load(root / 'detailed_fids.npy', mmap_mode='r')
    assert emb.shape == (20, 12, 8) and losses.shape == (20, 12) and fids.shape == (20, 12)
    assert np.all(np.isfinite(emb)) and np.all(np.abs(emb).sum(-1) > 0)
    assert np.all(losses > 0)  # soft margin: never exactly 0
    known = set(common.load_dataset(dataset[0])[1])
    for row in fids:
        names = [f.decode() for f in row]
        assert set(names) <= known
        groups = pid_of(names).reshape(4, 3)  # the real pipeline's PK batches
        assert np.all(groups == groups[:, :1]) and len(set(groups[:, 0])) == 4


def test_refuses_non_empty_root_and_resume_without_args(tmp_path, dataset):
    csv, images = dataset
    (tmp_path / 'old').mkdir()
    (tmp_path / 'old' / 'notes.txt').write_text('x')
    result = run_train('--train_set', csv, '--image_root', images, '--experiment_root',
                       tmp_path / 'old', *TINY)
    assert result.returncode == 2
    assert 'train.py: error:' in result.stderr and '--resume' in result.stderr
    assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'old' / 'args.json').exists()

    result = run_train('--experiment_root', tmp_path / 'old', '--resume')
    assert result.returncode == 2 and 'args.json' in result.stderr
    assert 'Traceback' not in result.stderr


def test_bad_data_is_named_before_training(tmp_path, dataset):
    csv, images = dataset
    lines = csv.read_text().splitlines()
    missing = tmp_path / 'missing.csv'
    missing.write_text('\n'.join(lines + [f'ghost,images/ghost_{i}.jpg' for i in range(4)]))
    result = run_train('--train_set', missing, '--image_root', images, '--experiment_root',
                       tmp_path / 'a', *TINY)
    assert result.returncode == 2, result.stderr[-2000:]
    assert '4 of' in result.stderr and 'ghost_0.jpg' in result.stderr

    result = run_train('--train_set', csv, '--image_root', images, '--experiment_root',
                       tmp_path / 'b', *TINY, '--batch_p', '50')
    assert result.returncode == 2 and '13 identities' in result.stderr

    (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8 this is not a JPEG')
    (tmp_path / 'images').symlink_to(images / 'images')
    broken = tmp_path / 'broken.csv'
    broken.write_text('\n'.join(lines + ['person1,broken.jpg']))
    result = run_train('--train_set', broken, '--image_root', tmp_path, '--experiment_root',
                       tmp_path / 'c', *TINY)
    assert result.returncode == 2 and 'broken.jpg' in result.stderr
    assert 'cannot be decoded' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'c').exists()  # nothing written: the same command works once fixed


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_interrupt_saves_and_resume_matches_uninterrupted(signum, tmp_path, dataset, full_run,
                                                          slim_backbone):
    csv, images = dataset
    root = tmp_path / 'run'
    command = [sys.executable, str(ROOT / 'train.py'), '--train_set', str(csv), '--image_root',
               str(images), '--experiment_root', str(root), *TINY, *RUN,
               '--initial_checkpoint', slim_backbone[0]]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 180
    for line in process.stderr:
        seen.append(line)
        if 'iter 3/20' in line:
            process.send_signal(signum)
            break
        assert time.time() < deadline, ''.join(seen[-20:])
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 0, rest[-3000:]
    stopped = stored_step(tf.train.latest_checkpoint(str(root)))
    assert 3 <= stopped < 15, 'the run was not interrupted'
    assert f'stopped after iteration {stopped} of 20' in rest
    if signum == signal.SIGTERM:
        return  # the same path from here on: resume once, after SIGINT

    result = run_train('--experiment_root', root, '--resume', '--batch_p', '5')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'batch_p' in result.stderr and 'stored value 4' in result.stderr
    assert f'iter {stopped + 1}/20' in result.stderr and f'iter {stopped}/20' not in result.stderr
    assert stored_step(tf.train.latest_checkpoint(str(root))) == 20
    assert "Adam's beta1 is now 0.5" in result.stderr
    assert {0, stopped, 20} <= set(checkpoint_steps(root))
    # The resumed run saw exactly the batches of the uninterrupted one.
    np.testing.assert_array_equal(np.load(root / 'detailed_fids.npy'),
                                  np.load(full_run[0] / 'detailed_fids.npy'))
    # The resumed part used the schedule's learning rate of each iteration.
    logged = re.findall(r'iter (\d+)/20: .* lr ([0-9.e+-]+),', result.stderr)
    assert len(logged) == 20 - stopped
    for done, rate in logged:
        assert float(rate) == pytest.approx(schedule.learning_rate(int(done) - 1, 1e-3, 15, 20),
                                            rel=1e-2)


def test_non_finite_loss_stops_without_saving(monkeypatch, tmp_path, dataset):
    csv, images = dataset
    real = loss.batch_hard
    monkeypatch.setattr(loss, 'batch_hard', lambda d, p, m: real(d, p, m) * np.nan)
    root = tmp_path / 'nan'
    assert train_in_process(monkeypatch, '--train_set', csv, '--image_root', images,
                            '--experiment_root', root, *TINY, '--train_iterations', '5',
                            '--checkpoint_frequency', '1') == 1
    assert checkpoint_steps(root) == [0]
    errors = [line for line in (root / 'train.log').read_text().splitlines() if 'ERROR' in line]
    assert len(errors) == 1 and 'not finite at iteration 1' in errors[0]
    assert 'nonfinite_batch_1.txt' in errors[0]
    batch = (root / 'nonfinite_batch_1.txt').read_text().splitlines()
    assert len(batch) == 12 and set(batch) <= set(common.load_dataset(csv)[1])


def test_initial_checkpoint_is_checkpoint_0(full_run, slim_backbone):
    root, result = full_run
    assert 'ignored 1 checkpoint variables' in result.stderr  # the ImageNet logits
    model = build_model('mobilenet_v1_0_25', 'direct', 8)
    tf.train.Checkpoint(model=model).restore(str(root / 'checkpoint-0')).expect_partial()
    loaded = {slim_name(layer, v): v.numpy()
              for layer in model.layers for v in layer.weights}
    for name, value in slim_backbone[1].items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


FAKE_PYTHON = """#!/bin/sh
printf '%s\\n' "$@" > "$ARGV_FILE"
"""


@pytest.mark.parametrize('script', ['market1501_train.sh', 'duke_mtmc_train.sh', 'mars_train.sh'])
def test_paper_scripts_set_trinet_flags_and_forward_the_rest(script, tmp_path):
    # What the script hands to train.py, parsed by train.py's own parser. (The README test runs
    # both scripts for real.)
    fake = tmp_path / 'python'
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {**os.environ, 'PYTHON': str(fake), 'ARGV_FILE': str(tmp_path / 'argv')}
    result = subprocess.run(['sh', str(ROOT / script), 'IMAGES'], capture_output=True,
                            text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2 and 'EXPERIMENT_ROOT' in result.stderr

    result = subprocess.run(['sh', str(ROOT / script), 'IMAGES', 'none', 'ROOT', '--train_set',
                             'mine.csv', '--batch_p', '4', '--train_iterations', '2'],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / 'argv').read_text().splitlines()
    assert argv[0] == str(ROOT / 'train.py')
    stored = vars(train.parser.parse_args(argv[1:]))
    # The paper's settings that the test did not override...
    assert stored['learning_rate'] == 3e-4 and stored['decay_start_iteration'] == 15000
    assert stored['margin'] == 'soft' and stored['loss'] == 'batch_hard'
    assert stored['metric'] == 'euclidean' and stored['crop_augment'] and stored['flip_augment']
    assert stored['model_name'] == 'resnet_v1_50' and stored['head_name'] == 'fc1024'
    assert (stored['batch_k'], stored['embedding_dim']) == (4, 128)
    assert (stored['net_input_height'], stored['net_input_width']) == (256, 128)
    assert stored['initial_checkpoint'] is None and stored['image_root'] == 'IMAGES'
    # ...and the forwarded flags, which win.
    assert stored['train_iterations'] == 2 and stored['batch_p'] == 4
    assert stored['train_set'] == 'mine.csv' and stored['experiment_root'] == 'ROOT'

    subprocess.run(['sh', str(ROOT / script), 'IMAGES', 'slim.ckpt', 'ROOT', '--train_set', 'x'],
                   env=env, cwd=tmp_path, check=True)
    argv = (tmp_path / 'argv').read_text().splitlines()
    assert train.parser.parse_args(argv[1:]).initial_checkpoint == 'slim.ckpt'


def test_collapse_warning(monkeypatch, tmp_path, dataset):
    # An absurd learning rate collapses the embedding at once: the soft-margin loss sits at ln 2.
    csv, images = dataset
    monkeypatch.setattr(reporting, 'COLLAPSE_ITERATIONS', 5)
    flags = [flag if flag != '1e-3' else '1e30' for flag in TINY]
    assert train_in_process(monkeypatch, '--train_set', csv, '--image_root', images,
                            '--experiment_root', tmp_path / 'run', *flags,
                            '--train_iterations', '12') == 0
    log = (tmp_path / 'run' / 'train.log').read_text()
    assert log.count('stuck at ln 2') == 1
    assert '--initial_checkpoint' in log and '--learning_rate' in log


# ----------------------------------------------------------------------------- nothing lost
def start_train(*flags, until='iter 1/'):
    """A train.py subprocess, returned once its log shows `until`."""
    process = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *map(str, flags)],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 180
    for line in process.stderr:
        seen.append(line)
        if until in line:
            return process
        assert time.time() < deadline, ''.join(seen[-20:])
    raise AssertionError(f'train.py ended before {until!r}: {"".join(seen[-20:])}')


@pytest.mark.slow
def test_one_run_per_root_and_a_killed_run_is_taken_over(tmp_path, dataset):
    csv, images = dataset
    root = tmp_path / 'run'
    first = start_train('--train_set', csv, '--image_root', images, '--experiment_root', root,
                        *TINY, '--train_iterations', '100000', '--checkpoint_frequency', '0')
    try:
        for flags in (['--resume'], ['--train_set', csv, '--image_root', images, *TINY]):
            result = run_train('--experiment_root', root, *flags)
            assert result.returncode == 2, result.stderr[-3000:]
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f'pid {first.pid} on ' in lines[0], result.stderr
            assert 'in use by another train.py' in lines[0]
    finally:
        first.kill()  # SIGKILL: no handler runs, the lock file still names the first run
        first.communicate()
    assert f'pid {first.pid}' in (root / experiment.LOCK_FILE).read_text()

    # --resume keeps the stored 100000 iterations: stop it with SIGINT once it trains.
    second = start_train('--experiment_root', root, '--resume', until='took over')
    warning = ''.join(itertools.takewhile(lambda line: 'iter 1/' not in line, second.stderr))
    second.send_signal(signal.SIGINT)
    rest = second.communicate(timeout=120)[1]
    assert second.returncode == 0, rest[-3000:]
    log = (root / 'train.log').read_text()
    assert f'took over {root / experiment.LOCK_FILE}' in log and f'pid {first.pid}' in log, warning
    assert (root / experiment.LOCK_FILE).read_text() == ''  # released: no warning next time
    assert stored_step(tf.train.latest_checkpoint(str(root))) >= 1


@pytest.mark.slow
def test_failed_checkpoint_write_keeps_the_previous_one(monkeypatch, tmp_path, dataset):
    csv, images = dataset
    root = tmp_path / 'run'
    assert train_in_process(monkeypatch, '--train_set', csv, '--image_root', images,
                            '--experiment_root', root, *TINY, '--train_iterations', '2',
                            '--checkpoint_frequency', '1') == 0
    stored = json.loads((root / 'args.json').read_text())
    (root / 'args.json').write_text(json.dumps({**stored, 'train_iterations': 3}))
    before = {p.name: p.read_bytes() for p in root.glob('checkpoint*')}
    limit = 64 * 1024
    assert max(len(data) for data in before.values()) > limit  # the next one cannot be written
    result = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--experiment_root', root,
                             '--resume'], cwd=ROOT, text=True,
                            capture_output=True, timeout=240, preexec_fn=file_size_limit(limit))
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith('train.py: error: cannot save ') and 'checkpoint-3' in error, error
    assert 'Traceback' not in result.stderr and 'checkpoint-2' in error
    assert {p.name: p.read_bytes() for p in root.glob('checkpoint*')} == before
    assert not list(root.glob('*_temp*'))
    latest = tf.train.latest_checkpoint(str(root))
    assert latest.endswith('checkpoint-2') and stored_step(latest) == 2
    model = build_model('mobilenet_v1_0_25', 'direct', 8)
    restored = tf.train.Checkpoint(model=model).restore(latest)
    restored.expect_partial().assert_existing_objects_matched()


@pytest.mark.slow
def test_read_only_root_is_refused_in_one_line(tmp_path, full_run):
    root = tmp_path / 'run'
    shutil.copytree(full_run[0], root)
    stored = json.loads((root / 'args.json').read_text())
    (root / 'args.json').write_text(json.dumps({**stored, 'train_iterations': 25}))
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    result = run_read_only(root, [sys.executable, ROOT / 'train.py', '--experiment_root', root,
                                  '--resume'], cwd=ROOT, capture_output=True, text=True,
                           timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith('train.py: error: cannot write ') and 'Read-only' in lines[-1]
    assert 'Traceback' not in result.stderr
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()} == before


def checkpoint_tensors(path) -> dict:
    """Every tensor that a training checkpoint holds (model, Adam slots and iterations, step),
    except how often this process saved and the object graph's description."""
    reader = tf.train.load_checkpoint(str(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != '_CHECKPOINTABLE_OBJECT_GRAPH' and not name.startswith('save_counter')}


def assert_bit_identical(path, reference) -> None:
    got, want = checkpoint_tensors(path), checkpoint_tensors(reference)
    assert sorted(got) == sorted(want)
    differ = [name for name in want if not np.array_equal(got[name], want[name])]
    assert not differ, f'{len(differ)} of {len(want)} tensors differ from {reference}: {differ[:5]}'


@pytest.mark.slow
def test_deterministic_runs_give_bit_identical_weights(tmp_path, dataset, full_run,
                                                       slim_backbone):
    csv, images = dataset
    # The strong baseline's flags at their off values, given explicitly: a run without them
    # is the 2017 run, bit for bit (each term, augmentation and schedule change is skipped, not
    # computed as zero).
    neutral = ['--id_loss_weight', '0', '--center_loss_weight', '0', '--weight_decay', '0',
               '--random_erasing', '0', '--pad_crop', '0', '--warmup_iterations', '0',
               '--lr_schedule', 'exponential', '--last_stride', '2', '--pooling', 'avg']
    result = run_train('--train_set', csv, '--image_root', images, '--experiment_root',
                       tmp_path / 'again', *TINY, *RUN, '--initial_checkpoint', slim_backbone[0],
                       *neutral)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_steps(tmp_path / 'again') == checkpoint_steps(full_run[0]) != []
    for name in experiment.checkpoints_in(full_run[0]):
        assert_bit_identical(tmp_path / 'again' / name, full_run[0] / name)


def wait_for(process, condition, what: str, timeout: float = 180):
    """Polls `condition()` (every millisecond) until it returns something true, and returns that;
    fails if `process` ends first."""
    deadline = time.time() + timeout
    while not (found := condition()):
        assert process.poll() is None, f'train.py ended (exit {process.returncode}) before {what}'
        assert time.time() < deadline, f'no {what} after {timeout} s'
        time.sleep(0.001)
    return found


def kill(process) -> None:
    process.kill()  # SIGKILL: no handler, no flush, no cleanup
    assert process.wait(timeout=60) == -signal.SIGKILL


def iterations_logged(text: str) -> list[int]:
    return [int(done) for done in re.findall(r'iter (\d+)/20:', text)]


def latest_in_state(root) -> int | None:
    """The step of the checkpoint that the `checkpoint` state file names as the latest."""
    state = tf.train.get_checkpoint_state(str(root))
    return experiment.step_of(state.model_checkpoint_path) if state else None


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_weights(tmp_path, dataset,
                                                                     full_run, slim_backbone):
    csv, images = dataset
    root = tmp_path / 'run'
    fresh = ['--train_set', csv, '--image_root', images, *TINY, *RUN,
             '--initial_checkpoint', slim_backbone[0], '--keep_checkpoints', '2']
    rng = np.random.default_rng(15)
    kill_after = int(rng.integers(6, 9))  # an iteration between the checkpoints 5 and 10
    # The checkpoint being written when killed. Resuming from 5 crosses the decay start and the
    # beta1 switch (iteration 15) in the loop; resuming from 15 (a kill while saving 20) sets
    # beta1 before its first step.
    kill_saving = int(rng.choice([15, 20]))
    logs = []

    def start(*flags):
        logs.append(tmp_path / f'stderr_{len(logs)}.txt')
        with open(logs[-1], 'w') as stderr:  # a file, not a pipe that could fill up and block
            return subprocess.Popen([sys.executable, str(ROOT / 'train.py'), '--experiment_root',
                                     str(root), *map(str, flags)], cwd=ROOT, stderr=stderr)

    # 1. Right after the start: args.json is written, no checkpoint yet.
    process = start(*fresh)
    wait_for(process, (root / 'args.json').exists, 'args.json')
    process.send_signal(signal.SIGSTOP)  # frozen: the files are what the kill leaves
    assert latest_in_state(root) is None
    kill(process)

    # 2. During a step, some iterations after checkpoint 5.
    process = start('--resume')
    wait_for(process, lambda: f'iter {kill_after}/20' in logs[-1].read_text(),
             f'iteration {kill_after}')
    kill(process)

    # 3. While checkpoint-<kill_saving> is written: its shards exist, the state file does not
    # name it yet (else the write was over: wait for the next one).
    process = start('--resume')
    while True:
        name = wait_for(process, lambda: [p.name for p in root.glob('checkpoint-*_temp*')],
                        'a checkpoint being written')[0]
        process.send_signal(signal.SIGSTOP)
        saving = experiment.step_of(name.removesuffix('_temp'))
        if saving >= kill_saving and latest_in_state(root) < saving:
            break
        process.send_signal(signal.SIGCONT)
    kill(process)

    # 4. To the end.
    process = start('--resume')
    assert process.wait(timeout=240) == 0, logs[-1].read_text()[-3000:]

    texts = [log.read_text() for log in logs]
    assert 'no checkpoint in' in texts[1] and 'starting from the initialisation' in texts[1]
    for killed, resumed in zip(texts[1:3], texts[2:4], strict=True):
        assert 'took over' in resumed  # the killed run's lock
        done = max(iterations_logged(killed))
        restart = re.search(r'resuming from (\S+)checkpoint-(\d+): iteration (\d+) on', resumed)
        assert restart, resumed[-3000:]
        from_step = int(restart[2])
        assert int(restart[3]) == from_step + 1 == iterations_logged(resumed)[0]
        assert 0 <= done - from_step <= 5, 'more than --checkpoint_frequency recomputed'
    assert int(re.search(r'checkpoint-(\d+): iteration', texts[3])[1]) == saving - 5
    assert f'removed checkpoint-{saving}_temp' in texts[3]  # the killed write's shards
    log = (root / 'train.log').read_text()
    assert log.count('resuming from') == 2 and log.count('took over') == 3

    assert_bit_identical(root / 'checkpoint-20', full_run[0] / 'checkpoint-20')
    for name in ('emb', 'loss', 'fids'):  # every iteration, recomputed or not, as uninterrupted
        np.testing.assert_array_equal(np.load(root / f'detailed_{name}.npy'),
                                      np.load(full_run[0] / f'detailed_{name}.npy'))
    assert checkpoint_steps(root) == [15, 20]  # --keep_checkpoints 2, also across the kills
    assert not list(root.glob('*_temp*')) and not list(root.glob('*.tmp-*'))
