"""embed.py: embeddings equal the model's own on the same images, augmentation, 2017 roots, errors.

Experiment roots are written here in the formats train.py (TF2 object checkpoints) and the 2017
TensorFlow 1 code (slim-named checkpoints with Adam slots) write, on tiny images and nets.
"""
import csv
import functools
import json
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import common
from model import build_model, import_plugin, plugin_names
import embed
from conftest import (TINY_DIM as DIM, TINY_HEAD as HEAD, TINY_NET as NET,
                      TINY_NET_SIZE as NET_SIZE, TINY_PRE_CROP as PRE_CROP, assert_close_float32,
                      assert_refused_and_kept, file_size_limit, float32_tolerance, randomize,
                      read_h5, run_read_only, slim_names, tf2_experiment, write_smooth_images)

ROOT = Path(__file__).resolve().parents[1]
# Image sizes that need up- and downscaling, one already at the net's size, one landscape.
SIZES = [(64, 32), (50, 23), (17, 9), (128, 64), (32, 16), (33, 70), (31, 15)]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """A dataset of JPEG, PNG and greyscale PNG files in sub-folders: (image_root, csv, fids)."""
    root = tmp_path_factory.mktemp('images')
    fids = [f'cam{i % 2}/{i:04d}.' + ['jpg', 'png', 'grey.png'][i % 3] for i in range(len(SIZES))]
    write_smooth_images(root, fids, SIZES)
    dataset = root / 'tiny_query.csv'
    dataset.write_text(''.join(f'p{i // 2},{fid}\n' for i, fid in enumerate(fids)))
    return root, dataset, fids


def reference(weights, image_root: Path, fids, flip: bool = False, crop: str | None = None,
              net: str = NET, head: str = HEAD, net_size=NET_SIZE, pre_crop=PRE_CROP,
              legacy_resize: bool = False, model=None) -> np.ndarray:
    """The model called once on all inputs, preprocessed here with NumPy slicing: (A, N, D)."""
    model = model or reference_model(net, head)
    model.set_weights(weights)
    inputs = []
    for fid in fids:
        image = common.read_image(str(image_root / fid))
        size = pre_crop if crop else net_size
        if legacy_resize:
            image = tf.compat.v1.image.resize_bilinear(image[None], size,
                                                       half_pixel_centers=False)[0]
        else:
            image = tf.image.resize(image, size)
        image = image.numpy()
        h, w = net_size
        for im in [image, image[:, ::-1]] if flip else [image]:
            mh, mw = im.shape[0] - h, im.shape[1] - w
            if crop == 'five':
                inputs += [im[mh // 2:mh // 2 + h, mw // 2:mw // 2 + w], im[:h, :w],
                           im[:h, mw:], im[mh:, :w], im[mh:, mw:]]
            elif crop == 'center':
                inputs.append(im[mh // 2:mh // 2 + h, mw // 2:mw // 2 + w])
            else:
                inputs.append(im)
    # In a tf.function, as embed.py and Keras' predict call it: eagerly, TensorFlow does not fuse
    # convolution, batch norm and ReLU, which rounds differently (up to 6e-5 of the largest value).
    emb = traced(model)(np.stack(inputs), training=False)['emb'].numpy()
    return emb.reshape(len(fids), -1, emb.shape[-1]).transpose(1, 0, 2)


@functools.cache
def reference_model(net: str, head: str):
    return build_model(net, head, DIM)


@functools.cache
def traced(model):
    return tf.function(model, autograph=False)  # traced once per model and input shape


def assert_float32_equal(got, want, model=None):
    """Equal up to the float32 rounding of other kernels: batch sizes, graph rewrites, CPUs."""
    model = model or reference_model(NET, HEAD)
    rows = want.reshape(-1, want.shape[-1])
    # Images must embed far apart (10x the tolerance), else equality within it proves nothing.
    assert np.ptp(rows, axis=0).max() > 10 * float32_tolerance(model) * np.abs(rows).max()
    assert_close_float32(got, want, model)


def assert_float32_differ(got, want, model=None):
    """Different by far more (10x) than the float32 rounding that assert_float32_equal allows."""
    tolerance = float32_tolerance(model or reference_model(NET, HEAD))
    assert np.abs(got - want).max() > 10 * tolerance * np.abs(want).max()


def run_embed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / 'embed.py'), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def assert_input_error(proc: subprocess.CompletedProcess, *culprits: str) -> None:
    """Exit code 2 and one line `embed.py: error: ...` naming the culprits, nothing else."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('embed.py: error: '), proc.stderr
    for culprit in culprits:
        assert culprit in lines[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory, images):
    """An experiment root with checkpoints 0, 5 and 10 of the tiny net: (root, {step: weights})."""
    root = tmp_path_factory.mktemp('experiment')
    return root, tf2_experiment(root, images[0], steps=(0, 5, 10))


# ----------------------------------------------------------------------------- pipeline
def test_augmentation_types_follow_the_2017_names():
    assert embed.augmentation_types(False, None) == ['original_resize']
    assert embed.augmentation_types(True, 'avgpool') == ['original_avgpool',
                                                         'original_flip_avgpool']
    five = embed.augmentation_types(True, 'five')
    assert five == [f'original{f}_{c}' for f in ('', '_flip') for c in
                    ('center', 'top_left', 'top_right', 'bottom_left', 'bottom_right')]


@pytest.mark.parametrize('crop', [None, *embed.CROPS])
@pytest.mark.parametrize('flip', [False, True])
def test_augment_eager_tf_function_and_tf_data_agree(flip, crop):
    image = tf.constant(np.random.default_rng(1).integers(0, 256, (45, 22, 3), dtype=np.uint8))
    eager = embed.augment(image, NET_SIZE, PRE_CROP, flip, crop).numpy()
    count = len(embed.augmentation_types(flip, crop))
    size = PRE_CROP if crop == 'avgpool' else NET_SIZE
    assert eager.shape == (count, *size, 3) and eager.dtype == np.float32
    traced = tf.function(lambda x: embed.augment(x, NET_SIZE, PRE_CROP, flip, crop))(image)
    piped = next(iter(tf.data.Dataset.from_tensors(image).map(
        lambda x: embed.augment(x, NET_SIZE, PRE_CROP, flip, crop))))
    np.testing.assert_array_equal(traced.numpy(), eager)
    np.testing.assert_array_equal(piped.numpy(), eager)


def test_flip_comes_before_crop():
    # As in the 2017 code: original_flip_top_left is the mirror image of original_top_right.
    image = tf.constant(np.random.default_rng(2).integers(0, 256, (40, 20, 3), dtype=np.uint8))
    out = embed.augment(image, NET_SIZE, PRE_CROP, True, 'five').numpy()
    types = embed.augmentation_types(True, 'five')
    flipped_top_left = out[types.index('original_flip_top_left')]
    np.testing.assert_array_equal(flipped_top_left, out[types.index('original_top_right')][:, ::-1])
    assert not np.array_equal(flipped_top_left, out[types.index('original_top_left')][:, ::-1])


def test_legacy_resize_is_tf1s():
    # TF1's resize_images had no half-pixel centres: visibly different on a 2x upscale.
    image = tf.constant(np.random.default_rng(3).integers(0, 256, (16, 8, 3), dtype=np.uint8))
    new = embed.augment(image, NET_SIZE, PRE_CROP, False, None).numpy()[0]
    old = embed.augment(image, NET_SIZE, PRE_CROP, False, None, legacy_resize=True).numpy()[0]
    np.testing.assert_array_equal(old[::2, ::2], image.numpy())  # TF1 kept pixel (0, 0) in place
    assert np.abs(new - old).max() > 1


# ----------------------------------------------------------------------------- equality
def test_subprocess_matches_one_batch_with_a_partial_last_batch(trained, images):
    # 7 images in batches of 3: the last batch holds one image and is padded.
    (root, weights), (image_root, dataset, fids) = trained, images
    proc = run_embed('--experiment_root', root, '--dataset', dataset, '--batch_size', 3)
    assert proc.returncode == 0, proc.stderr
    out = read_h5(root / 'tiny_query_embeddings.h5')  # the default name
    assert set(out) == {'emb', 'embs'}
    assert out['emb'].shape == (len(fids), DIM) and out['emb'].dtype == np.float32
    assert_float32_equal(out['emb'], reference(weights[10], image_root, fids)[0])  # the latest
    np.testing.assert_array_equal(out['embs'], out['emb'])
    assert f'{len(fids)}/{len(fids)}' in proc.stderr and 'img/s' in proc.stderr  # progress


@pytest.mark.parametrize('batch_size', [1, 7, 256])
def test_batch_size_changes_nothing(tmp_path, trained, images, batch_size):
    (root, weights), (image_root, dataset, fids) = trained, images
    embed.main(['--experiment_root', str(root), '--dataset', str(dataset), '--quiet',
                '--batch_size', str(batch_size), '--filename', str(tmp_path / 'out.h5')])
    assert_float32_equal(read_h5(tmp_path / 'out.h5')['emb'],
                         reference(weights[10], image_root, fids)[0])


def test_row_i_is_line_i_of_the_csv(tmp_path, trained, images):
    (root, weights), (image_root, _, fids) = trained, images
    order = [3, 0, 6, 6, 1, 5, 2, 4]  # shuffled, with a repeat
    dataset = tmp_path / 'shuffled.csv'
    dataset.write_text(''.join(f'x,{fids[i]}\n' for i in order))
    embed.main(['--experiment_root', str(root), '--dataset', str(dataset), '--quiet',
                '--batch_size', '3'])
    emb = read_h5(root / 'shuffled_embeddings.h5')['emb']
    want = reference(weights[10], image_root, fids)[0]
    assert_float32_equal(emb, want[order])
    np.testing.assert_array_equal(emb[2], emb[3])


@pytest.mark.parametrize('head', plugin_names('heads'))
def test_every_head(tmp_path, images, head):
    image_root, dataset, fids = images
    weights = tf2_experiment(tmp_path, image_root, head=head, model=reference_model(NET, head))
    embed.main(['--experiment_root', str(tmp_path), '--dataset', str(dataset), '--quiet',
                '--batch_size', '4'])
    emb = read_h5(tmp_path / 'tiny_query_embeddings.h5')['emb']
    assert_float32_equal(emb, reference(weights[0], image_root, fids, head=head)[0],
                         reference_model(NET, head))


def test_any_checkpoint_by_name(tmp_path, trained, images):
    (root, weights), (image_root, dataset, fids) = trained, images
    embed.main(['--experiment_root', str(root), '--dataset', str(dataset), '--quiet',
                '--checkpoint', 'checkpoint-5', '--filename', str(tmp_path / 'five.h5')])
    five = read_h5(tmp_path / 'five.h5')['emb']
    assert_float32_equal(five, reference(weights[5], image_root, fids)[0])
    assert_float32_differ(five, reference(weights[10], image_root, fids)[0])


def test_command_line_wins_over_args_json(tmp_path, images, capsys):
    image_root, dataset, fids = images
    weights = tf2_experiment(tmp_path, image_root, image_root='/nowhere', crop_augment=True,
                             model=reference_model(NET, HEAD))
    embed.main(['--experiment_root', str(tmp_path), '--dataset', str(dataset),
                '--image_root', str(image_root), '--net_input_height', '24',
                '--net_input_width', '12', '--quiet'])
    emb = read_h5(tmp_path / 'tiny_query_embeddings.h5')['emb']
    assert_float32_equal(emb, reference(weights[0], image_root, fids, net_size=(24, 12))[0])
    assert 'crop augmentation differs' in capsys.readouterr().err  # trained with, embedded without


# ----------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize('flip, crop, aggregator', [
    (True, 'five', 'mean'), (True, None, 'normalized_mean'), (False, 'five', 'mean'),
    (True, 'avgpool', 'mean'), (False, 'center', None), (False, 'avgpool', None)])
def test_augmentation(tmp_path, trained, images, flip, crop, aggregator):
    (root, weights), (image_root, dataset, fids) = trained, images
    argv = ['--experiment_root', str(root), '--dataset', str(dataset), '--quiet',
            '--batch_size', '6', '--filename', str(tmp_path / 'aug.h5')]
    argv += ['--flip_augment'] * flip + ['--crop_augment', crop] * bool(crop)
    argv += ['--aggregator', aggregator] * bool(aggregator)
    embed.main(argv)
    out = read_h5(tmp_path / 'aug.h5')
    want = reference(weights[10], image_root, fids, flip, crop)
    types = embed.augmentation_types(flip, crop)
    assert len(types) == (1 + flip) * (5 if crop == 'five' else 1)
    if aggregator is None:
        assert 'emb_aug' not in out
        assert_float32_equal(out['emb'], want[0])
        return
    assert out['augmentation_types'] == types
    assert out['emb_aug'].shape == (len(types), len(fids), DIM)
    assert_float32_equal(out['emb_aug'], want)
    assert_float32_differ(want[0], want[-1])  # augmentations do differ
    aggregate = import_plugin('aggregators', aggregator).aggregate
    np.testing.assert_array_equal(out['emb'], aggregate(out['emb_aug']))


# ----------------------------------------------------------------------------- 2017 roots
@pytest.mark.parametrize('net', plugin_names('nets'))
def test_2017_experiment_root_of_every_net(tmp_path, images, net, write_tf1_checkpoint):
    # Every net, as the 2017 TensorFlow 1 code saved it with the paper's head. (The TF2 path
    # does not depend on the net; it is tested with the tiny net and every head.)
    image_root, dataset, fids = images
    keras.utils.set_random_seed(0)
    model = build_model(net, 'fc1024', DIM)
    randomize(model, seed=3)
    weights = model.get_weights()
    tensors = slim_names(model)
    assert {'fully_connected/weights', 'fully_connected/BatchNorm/moving_variance',
            'emb/weights', 'emb/biases'} <= set(tensors)
    if net == 'resnet_v1_50':
        assert 'resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/weights' in tensors
    rng = np.random.default_rng(4)
    # What else the 2017 checkpoints hold, which must not be loaded: Adam slots (a few suffice)
    # and the step counters.
    extra = {f'{name}/{slot}': rng.normal(size=tensors[name].shape).astype(np.float32)
             for name in ('emb/weights', 'emb/biases', 'fully_connected/weights')
             for slot in ('Adam', 'Adam_1')}
    extra.update({'beta1_power': np.float32(0.1), 'beta2_power': np.float32(0.9)})
    write_tf1_checkpoint(tmp_path / 'checkpoint-25000', {**tensors, **extra}, global_step=25000)
    assert not tf.train.load_checkpoint(str(tmp_path / 'checkpoint-25000')).has_tensor(
        '_CHECKPOINTABLE_OBJECT_GRAPH')
    # The state file of a root copied from another machine names paths that do not exist here.
    (tmp_path / 'checkpoint').write_text(
        'model_checkpoint_path: "/old/machine/experiment/checkpoint-25000"\n')
    # The keys of a 2017 args.json, with training augmentation switched on.
    (tmp_path / 'args.json').write_text(json.dumps({
        'batch_k': 4, 'batch_p': 18, 'checkpoint_frequency': 1000, 'crop_augment': True,
        'decay_start_iteration': 15000, 'detailed_logs': False, 'embedding_dim': DIM,
        'experiment_root': '/old/machine/experiment', 'flip_augment': True, 'head_name': 'fc1024',
        'image_root': str(image_root), 'initial_checkpoint': 'resnet_v1_50.ckpt',
        'learning_rate': 0.0003, 'loading_threads': 8, 'loss': 'batch_hard', 'margin': 'soft',
        'metric': 'euclidean', 'model_name': net, 'net_input_height': NET_SIZE[0],
        'net_input_width': NET_SIZE[1], 'pre_crop_height': PRE_CROP[0],
        'pre_crop_width': PRE_CROP[1], 'resume': False, 'train_iterations': 25000,
        'train_set': 'data/market1501_train.csv'}, indent=2))

    embed.main(['--experiment_root', str(tmp_path), '--dataset', str(dataset), '--quiet',
                '--batch_size', '5', '--crop_augment', 'center'])
    out = read_h5(tmp_path / 'tiny_query_embeddings.h5')
    assert 'emb_aug' not in out  # the 2017 training flags switched nothing on
    want = reference(weights, image_root, fids, crop='center', net=net, head='fc1024',
                     legacy_resize=True, model=model)
    assert_float32_equal(out['emb'], want[0], model)
    # The 2017 root really needed TensorFlow 1's resize.
    new_resize = reference(weights, image_root, fids, crop='center', net=net, head='fc1024',
                           model=model)[0]
    assert_float32_differ(out['emb'], new_resize, model)


# ----------------------------------------------------------------------------- output
def test_csv_output(tmp_path, images, capsys):
    image_root, dataset, fids = images
    tf2_experiment(tmp_path, image_root, model=reference_model(NET, HEAD))
    base = ['--experiment_root', str(tmp_path), '--dataset', str(dataset), '--quiet']
    embed.main(base + ['--csv', 'emb.csv'])
    emb = read_h5(tmp_path / 'tiny_query_embeddings.h5')['emb']
    with open(tmp_path / 'emb.csv', newline='') as f:
        rows = list(csv.reader(f))
    assert [row[0] for row in rows] == fids
    np.testing.assert_array_equal(np.array([row[1:] for row in rows], np.float32), emb)
    capsys.readouterr()
    embed.main(base + ['--csv', '-', '--filename', 'again.h5'])
    assert capsys.readouterr().out == (tmp_path / 'emb.csv').read_text()
    assert not list(tmp_path.glob('*.tmp*'))


def test_filename_relative_to_the_experiment_root_or_absolute(tmp_path, images):
    image_root, dataset, _ = images
    tf2_experiment(tmp_path / 'exp', image_root, model=reference_model(NET, HEAD))
    (tmp_path / 'exp' / 'sub').mkdir()
    base = ['--experiment_root', str(tmp_path / 'exp'), '--dataset', str(dataset), '--quiet']
    embed.main(base + ['--filename', 'sub/a.h5'])
    embed.main(base + ['--filename', str(tmp_path / 'b.h5')])
    np.testing.assert_array_equal(common.load_embeddings(tmp_path / 'exp' / 'sub' / 'a.h5'),
                                  common.load_embeddings(tmp_path / 'b.h5'))


def test_interrupted_write_leaves_the_old_file_intact(tmp_path, images, monkeypatch):
    image_root, dataset, _ = images
    tf2_experiment(tmp_path, image_root, steps=(0, 1), model=reference_model(NET, HEAD))
    base = ['--experiment_root', str(tmp_path), '--dataset', str(dataset), '--quiet']
    embed.main(base + ['--checkpoint', 'checkpoint-0'])
    final = tmp_path / 'tiny_query_embeddings.h5'
    before = final.read_bytes()
    create_dataset = h5py.Group.create_dataset

    def interrupted(self, name, *args, **kwargs):
        create_dataset(self, name, *args, **kwargs)
        raise KeyboardInterrupt  # Ctrl+C after the first dataset is on disk

    monkeypatch.setattr(h5py.Group, 'create_dataset', interrupted)
    with pytest.raises(KeyboardInterrupt):
        embed.main(base + ['--checkpoint', 'checkpoint-1'])
    assert final.read_bytes() == before
    assert read_h5(final)['emb'].shape == (len(SIZES), DIM)


@pytest.mark.parametrize('failure', ['disk full', 'read-only folder'])
def test_failed_write_keeps_the_previous_file(failure, tmp_path, trained, images):
    out = tmp_path / 'out'
    out.mkdir()
    previous = out / 'query.h5'
    common.save_embeddings(previous, np.arange(6, dtype=np.float32).reshape(3, 2))
    before = previous.read_bytes()
    command = [sys.executable, ROOT / 'embed.py', '--experiment_root', trained[0], '--dataset',
               images[1], '--filename', previous, '--quiet']
    if failure == 'disk full':  # the HDF5 file's first kilobyte fits, the rest does not
        result = subprocess.run(list(map(str, command)), capture_output=True, text=True,
                                timeout=300, cwd=ROOT, preexec_fn=file_size_limit(1024))
    else:
        result = run_read_only(out, command, capture_output=True, text=True, timeout=300,
                               cwd=ROOT)
    why = 'File too large' if failure == 'disk full' else 'Read-only file system'
    assert_refused_and_kept(result, 'embed.py', previous, before, why)
    np.testing.assert_array_equal(common.load_embeddings(previous),
                                  np.arange(6).reshape(3, 2))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize('flags, culprits', [
    (['--flip_augment'], ['--aggregator']),
    (['--crop_augment', 'five'], ['--aggregator']),
    (['--aggregator', 'mean'], ['--aggregator mean']),
    (['--crop_augment', 'center', '--aggregator', 'mean'], ['--aggregator mean']),
    (['--checkpoint', 'checkpoint-7'],
     ['checkpoint-7', 'checkpoint-0, checkpoint-5, checkpoint-10']),
    (['--filename', 'no/such/folder/out.h5'], ['no/such/folder/out.h5']),
    (['--filename', '.'], ['folder']),
    (['--csv', 'no/such/folder/out.csv'], ['out.csv']),
    (['--crop_augment', 'center', '--pre_crop_height', '20'], ['pre-crop size']),
])
def test_bad_flags(trained, images, flags, culprits):
    proc = run_embed('--experiment_root', trained[0], '--dataset', images[1], *flags)
    assert_input_error(proc, *culprits)


def test_missing_image_is_named(tmp_path, trained, images):
    dataset = tmp_path / 'missing.csv'
    dataset.write_text(images[1].read_text() + 'p9,cam0/gone.jpg\n')
    assert_input_error(run_embed('--experiment_root', trained[0], '--dataset', dataset),
                       'cam0/gone.jpg')


def test_undecodable_image_is_named(tmp_path, trained, images):
    image_root, dataset, _ = images
    bad = tmp_path / 'images'
    (bad / 'cam0').mkdir(parents=True)
    for fid in images[2]:
        (bad / fid).parent.mkdir(exist_ok=True)
        (bad / fid).write_bytes((image_root / fid).read_bytes())
    (bad / 'cam0' / 'broken.jpg').write_bytes(b'not a JPEG at all')
    lines = dataset.read_text().splitlines()
    with_bad = tmp_path / 'broken.csv'
    with_bad.write_text('\n'.join(lines[:4] + ['p9,cam0/broken.jpg'] + lines[4:]) + '\n')
    # In-process, to spare TensorFlow's import: the other tests show how an InputError ends.
    with pytest.raises(common.InputError, match='cannot decode image .*cam0/broken.jpg'):
        embed.main(['--experiment_root', str(trained[0]), '--dataset', str(with_bad),
                    '--image_root', str(bad), '--batch_size', '2', '--quiet'])
    assert not list(trained[0].glob('broken_embeddings.h5*'))


def test_no_checkpoint_at_all(tmp_path, images):
    tf2_experiment(tmp_path, images[0], model=reference_model(NET, HEAD))
    for path in tmp_path.glob('checkpoint*'):
        path.unlink()
    assert_input_error(run_embed('--experiment_root', tmp_path, '--dataset', images[1]),
                       'no checkpoint', str(tmp_path))


def test_settings_missing_without_args_json(tmp_path, images):
    assert_input_error(run_embed('--experiment_root', tmp_path, '--dataset', images[1],
                                 '--model_name', NET),
                       'head_name', 'embedding_dim', 'args.json')


def test_checkpoint_of_another_model(trained, images):
    with pytest.raises(common.InputError, match='does not hold the weights'):
        embed.main(['--experiment_root', str(trained[0]), '--dataset', str(images[1]),
                    '--quiet', '--embedding_dim', '16'])


def test_missing_experiment_root(tmp_path, images):
    assert_input_error(run_embed('--experiment_root', tmp_path / 'nope', '--dataset', images[1]),
                       'nope')


WRITER = """import sys, common
with common.atomic_write(sys.argv[1]) as tmp, open(tmp, 'w') as f:
    print(tmp.name, flush=True)
    for _ in range(2000):
        f.write(sys.argv[2] * 1000)
"""


def test_two_writers_of_one_file_never_interleave(tmp_path):
    # Each process writes its own temporary (name.tmp-<pid>): the file is one writer's, whole.
    target = tmp_path / 'out.h5'
    writers = [subprocess.Popen([sys.executable, '-c', WRITER, str(target), letter],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True) for letter in 'ab']
    names = [writer.communicate(timeout=60)[0].strip() for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0]
    assert names == [f'out.h5.tmp-{writer.pid}' for writer in writers]
    content = target.read_text()
    assert len(content) == 2_000_000 and len(set(content)) == 1
    assert not list(tmp_path.glob('*.tmp*'))
