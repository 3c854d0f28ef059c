"""--mixed_precision: batch norm and heads under the half-precision policies, and short runs
on the demo data in bfloat16 and float16 that learn as a float32 run does, with float32
variables, embeddings and checkpoints, the policy in args.json, restored by --resume and used
by embed.py."""
import json
import signal
import subprocess
import sys
import types

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import common
import embed
import evaluate
import layers
import model
import reporting
import train
from conftest import ROOT
from excluders import market1501
from model import PRECISIONS, build_model, cpu_bfloat16, plugin_names

HALVES = PRECISIONS[1:]
# TensorFlow's CPU kernels have bfloat16 only with AVX-512: elsewhere it aborts or crashes the
# process, and train.py refuses it (test_bfloat16_is_refused_where_the_cpu_cannot_compute_it).
NO_BFLOAT16 = cpu_bfloat16() == 'none'


def available(precision: str) -> None:
    """Skips, saying why, a test of bfloat16 on a CPU without it."""
    if precision == 'bfloat16' and NO_BFLOAT16:
        pytest.skip('this CPU has no AVX-512, so TensorFlow cannot compute bfloat16 on it')
# Unit roundoff (the largest relative error of one rounding): 8 significand bits for
# bfloat16, 11 for float16.
UNIT_ROUNDOFF = {'bfloat16': 2.0 ** -8, 'float16': 2.0 ** -11}
ITERATIONS, STOP_AT = 40, 20
TRAIN = ['--model_name', 'small_cnn', '--head_name', 'fc1024', '--embedding_dim', '32',
         '--batch_p', '8', '--batch_k', '4', '--net_input_height', '32', '--net_input_width', '16',
         '--learning_rate', '2e-3', '--train_iterations', str(ITERATIONS),
         '--decay_start_iteration', '-1', '--checkpoint_frequency', '0', '--seed', '1',
         '--loading_threads', '2', '--detailed_logs']


# ----------------------------------------------------------------------------- layers and heads
@pytest.mark.parametrize('precision', HALVES)
@pytest.mark.parametrize('training', [False, True], ids=['inference', 'training'])
def test_batch_norm_computes_in_half_precision_with_float32_weights(precision, training):
    available(precision)
    rng = np.random.default_rng(3)
    decay, epsilon = 0.9, 1e-3
    x = (rng.normal(size=(6, 5, 4, 3)) * 3 + 2).astype(np.float32)
    half = layers.BatchNorm(decay, epsilon, dtype=f'mixed_{precision}')
    full = layers.BatchNorm(decay, epsilon)
    values = [rng.uniform(0.5, 1.5, 3), rng.normal(size=3), rng.normal(size=3),
              rng.uniform(0.5, 1.5, 3)]  # gamma, beta, moving mean and variance
    for layer in (half, full):
        layer.build(x.shape)
        for variable, value in zip(layer.weights, values, strict=True):
            variable.assign(value.astype(np.float32))
    got = tf.function(half, autograph=False)(x, training=training)
    want = full(x, training=training).numpy()
    assert got.dtype == precision
    assert all(variable.dtype == 'float32' for variable in half.weights)

    # x is rounded once to the half type (|dx| <= u|x|); the kernel works in float32 from there,
    # and rounds y once more (u |y|). In units of the standard deviation sd that normalises x,
    # s = max|x| / sd: inference moves y by gamma u s at most. Training also normalises by the
    # batch's moments of the rounded x: x - mean moves by up to 2 u max|x|, the variance by up
    # to 2 u max|x| max|x - mean| (+ its square), so 1/sd relatively by about u s^2.
    u, big = UNIT_ROUNDOFF[precision], np.abs(x).max()
    variance = x.reshape(-1, 3).var(0) if training else values[3]
    s = big / np.sqrt(variance.min() + epsilon)
    bound = values[0].max() * u * (2 * s + s ** 2 if training else s) + u * np.abs(want).max()
    np.testing.assert_allclose(got.numpy().astype(np.float32), want, rtol=0, atol=bound)
    # The moving averages take (1 - decay) of the batch's moments, computed in float32.
    spread = np.abs(x - x.reshape(-1, 3).mean(0)).max()
    n = x.size // 3
    for moved, kept, change in ((half.moving_mean, full.moving_mean, u * big),
                                (half.moving_variance, full.moving_variance,
                                 n / (n - 1) * (2 * u * big * spread + (u * big) ** 2))):
        np.testing.assert_allclose(moved.numpy(), kept.numpy(), rtol=0,
                                   atol=(1 - decay) * change + 1e-6)


@pytest.mark.parametrize('precision', HALVES)
@pytest.mark.parametrize('head', plugin_names('heads'))
def test_heads_give_float32_embeddings_and_variables(head, precision):
    available(precision)
    net = build_model('small_cnn', head, 8, precision)
    assert keras.config.dtype_policy().name == 'float32'  # set back for whatever is built next
    out = net(np.zeros((2, 32, 16, 3), np.float32), training=True)
    assert out['model_output'].dtype == precision  # the net does compute in the half type
    assert out['emb'].dtype == out['emb_raw'].dtype == 'float32'
    assert {variable.dtype for variable in net.variables} == {'float32'}


def test_a_head_with_a_half_precision_embedding_is_refused(monkeypatch):
    available('bfloat16')
    def half_head(endpoints, embedding_dim):
        emb = keras.layers.Dense(embedding_dim)(endpoints['model_output'])
        return {**endpoints, 'emb_raw': emb, 'emb': emb}

    real = model.import_plugin
    monkeypatch.setattr(model, 'import_plugin', lambda folder, name: types.SimpleNamespace(
        endpoints=half_head) if folder == 'heads' else real(folder, name))
    with pytest.raises(common.InputError, match=r"heads/mine\.py makes a bfloat16 `emb`.*"
                                                r"dtype='float32'"):
        build_model('small_cnn', 'mine', 8, 'bfloat16')


def test_embed_refuses_an_unknown_stored_precision(tmp_path):
    stored = {'model_name': 'small_cnn', 'head_name': 'fc1024', 'embedding_dim': 8,
              'net_input_height': 32, 'net_input_width': 16, 'mixed_precision': 'float8'}
    (tmp_path / 'args.json').write_text(json.dumps(stored))
    with pytest.raises(common.InputError, match=r"mixed_precision is 'float8', expected one of "
                                                r"none, bfloat16, float16"):
        embed.main(['--experiment_root', str(tmp_path), '--dataset', str(tmp_path / 'set.csv'),
                    '--image_root', str(tmp_path), '--quiet'])


# ----------------------------------------------------------------------------- training
def train_here(argv: list[str], stop_after: int | None = None) -> None:
    """train.main() in this process (no TensorFlow start-up); with `stop_after`, a SIGINT
    arrives once that many iterations are done, as Ctrl+C would."""
    report = reporting.Reporter.__call__

    def report_then_stop(self, iteration, *args):
        report(self, iteration, *args)
        if iteration + 1 == stop_after:
            signal.raise_signal(signal.SIGINT)

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, 'argv', ['train.py', *map(str, argv)])
        patch.setattr(reporting.Reporter, '__call__', report_then_stop)
        try:
            assert train.main() == 0
        finally:
            signal.signal(signal.SIGINT, handlers[0])
            signal.signal(signal.SIGTERM, handlers[1])


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """A smaller demo dataset (data/make_demo.py): 24 training identities, 30 test ones."""
    out = tmp_path_factory.mktemp('demo') / 'demo'
    done = subprocess.run([sys.executable, str(ROOT / 'data' / 'make_demo.py'), '--out', str(out),
                           '--train_ids', '24', '--test_ids', '30', '--height', '64', '--width',
                           '32', '--distractors', '10', '--junk', '5'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope='module')
def runs(demo, tmp_path_factory):
    """The same run (seed, batches, initial weights) in each precision: float16 interrupted
    after STOP_AT iterations and resumed (its loss scale must carry over), the others straight
    through. {precision: root}"""
    roots = {}
    for precision in PRECISIONS:
        if precision == 'bfloat16' and NO_BFLOAT16:
            continue  # its tests skip and say why
        root = roots[precision] = tmp_path_factory.mktemp('runs') / precision
        argv = ['--train_set', demo / 'demo_train.csv', '--image_root', demo,
                '--experiment_root', root, *TRAIN, '--mixed_precision', precision]
        if precision == 'float16':
            train_here(argv, stop_after=STOP_AT)
            train_here(['--experiment_root', root, '--resume'])
        else:
            train_here(argv)
    return roots


def embed_here(root, demo, split: str, *flags: str) -> tuple[np.ndarray, str]:
    """embed.main() on a demo split: (emb as stored in the HDF5 file, the precision used)."""
    used = []
    real = embed.build_model

    def spy(*args, **options):  # options: the net options and classes (model_options)
        used.append(args[3])
        return real(*args, **options)

    out = root / f'{split}{"_".join(flags)}.h5'
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embed, 'build_model', spy)
        embed.main(['--experiment_root', str(root), '--dataset', str(demo / f'demo_{split}.csv'),
                    '--image_root', str(demo), '--filename', str(out), '--quiet', *flags])
    with h5py.File(out, 'r') as f:
        return f['emb'][()], used[0]


def mean_ap(demo, query_emb: np.ndarray, test_emb: np.ndarray) -> float:
    query_pids, query_fids = common.load_dataset(demo / 'demo_query.csv', demo)
    test_pids, test_fids = common.load_dataset(demo / 'demo_test.csv', demo)
    return evaluate.evaluate(query_pids, query_fids, query_emb, test_pids, test_fids, test_emb,
                             market1501.Excluder(test_fids))['mAP']


@pytest.fixture(scope='module')
def learned(runs, demo):
    """How far each run's loss fell, its mAP on the demo's test split, and chance's mAP."""
    losses, maps = {}, {}
    for precision, root in runs.items():
        loss = np.load(root / 'detailed_loss.npy').mean(1)  # (iterations,) batch means
        losses[precision] = loss[:5].mean() - loss[-5:].mean()
        query_emb, used = embed_here(root, demo, 'query')
        assert used == precision  # embed.py's default: the policy the root was trained with
        test_emb, _ = embed_here(root, demo, 'test')
        assert query_emb.dtype == test_emb.dtype == np.float32
        maps[precision] = mean_ap(demo, query_emb, test_emb)
    rng = np.random.default_rng(0)
    chance = np.mean([mean_ap(demo, rng.normal(size=query_emb.shape),
                              rng.normal(size=test_emb.shape)) for _ in range(3)])
    return losses, maps, chance


@pytest.mark.slow
@pytest.mark.parametrize('precision', HALVES)
def test_mixed_precision_runs_learn_the_demo_as_float32_does(precision, learned):
    available(precision)
    losses, maps, chance = learned
    # The float32 run must learn, or the comparison proves nothing: mAP 17-26% over seeds 1-4
    # against chance at 4.5% (random embeddings), the loss falling from about 2.5 to 1.
    gain = maps['none'] - chance
    assert gain > 2 * chance and losses['none'] > 0.5, (maps, losses, chance)
    # Rounding makes a mixed run diverge from the float32 run like a run with another seed
    # does; over float32 seeds 1-4 the smallest mAP gain over chance was 0.6x the largest, and
    # the smallest loss drop 0.7x. A mixed run must keep 0.4x of float32's: a run that does not
    # learn (gradients lost to underflow, a step never applied) keeps about none.
    assert maps[precision] - chance > 0.4 * gain, (maps, chance)
    assert losses[precision] > 0.4 * losses['none'], losses


@pytest.mark.slow
def test_mixed_precision_is_recorded_and_checkpoints_stay_float32(runs, demo):
    for precision in set(runs) - {'none'}:
        root = runs[precision]
        assert json.loads((root / 'args.json').read_text())['mixed_precision'] == precision
        log = (root / 'train.log').read_text()
        resumed = precision == 'float16'
        # Once when the run started, and once more when --resume restored it from args.json.
        assert log.count(f'mixed precision: layers compute in {precision}') == 1 + resumed, log
        assert (f'resuming from {root}/checkpoint-{STOP_AT}:' in log) == resumed
        assert f'iter {ITERATIONS}/{ITERATIONS}' in log
        checkpoint = tf.train.load_checkpoint(str(root / f'checkpoint-{ITERATIONS}'))
        dtypes = {name: dtype for name, dtype in checkpoint.get_variable_to_dtype_map().items()
                  if name.startswith('model/') or name.startswith('optimizer/')}
        assert dtypes and set(dtypes.values()) <= {tf.float32, tf.int64}, dtypes
    # float16's dynamic loss scale is saved too, so that --resume continues it.
    names = tf.train.load_checkpoint(str(runs['float16'] / f'checkpoint-{ITERATIONS}'))
    assert any('dynamic_scale' in name for name in names.get_variable_to_shape_map())

    # A mixed-precision checkpoint restores into a float32 model; the embeddings then differ
    # only by the half type's rounding. Each layer with a kernel rounds its weights, its output
    # and its batch norm's output once (3 u relative to its scale, which batch norm keeps at
    # about 1), and the layers' errors add up: at most 3 u L of the largest value for L layers.
    half = 'bfloat16' if 'bfloat16' in runs else 'float16'
    mixed, _ = embed_here(runs[half], demo, 'query')
    full, used = embed_here(runs[half], demo, 'query', '--mixed_precision', 'none')
    assert used == 'none'
    net = build_model('small_cnn', 'fc1024', 32)
    kernels = sum(1 for layer in net.layers if getattr(layer, 'kernel', None) is not None)
    bound = 3 * UNIT_ROUNDOFF[half] * kernels
    np.testing.assert_allclose(mixed, full, rtol=0, atol=bound * np.abs(full).max())
    assert not np.allclose(mixed, full, rtol=0, atol=0)  # the half type did compute


@pytest.mark.slow  # with the other users of `runs`: conftest runs slow tests first
def test_bfloat16_is_refused_where_the_cpu_cannot_compute_it(monkeypatch, tmp_path, runs, demo):
    # ONEDNN_MAX_CPU_ISA=AVX2 makes this CPU one of the project's AVX2-only machines for
    # TensorFlow (where bfloat16 aborts or crashes): read when TensorFlow starts, so here only
    # the check sees it.
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
    assert cpu_bfloat16() == 'none'
    root = tmp_path / 'run'
    monkeypatch.setattr(sys, 'argv', ['train.py', '--train_set', str(demo / 'demo_train.csv'),
                                      '--image_root', str(demo), '--experiment_root', str(root),
                                      *TRAIN, '--mixed_precision', 'bfloat16'])
    with pytest.raises(common.InputError, match=r'--mixed_precision bfloat16: this CPU has no '
                                                r'AVX-512.*use --mixed_precision none'):
        train.main()
    assert not root.exists()  # refused before anything was written
    if 'bfloat16' not in runs:
        return  # no bfloat16 root to embed: this CPU could not train one
    # embed.py embeds a bfloat16 root there in float32 (its weights are float32), unless told
    # to use bfloat16.
    emb, used = embed_here(runs['bfloat16'], demo, 'query')
    assert used == 'none'
    with pytest.raises(common.InputError, match='this CPU has no AVX-512'):
        embed_here(runs['bfloat16'], demo, 'query', '--mixed_precision', 'bfloat16')
