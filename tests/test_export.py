"""export.py: the SavedModel and model.onnx give embed.py's embeddings without this project.

The exports are loaded in a fresh Python process that imports only TensorFlow, NumPy and
onnxruntime, as a service would; what it computes is compared here with embed.py's HDF5 output
and the Keras model on the same files and batch.
"""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import common
import embed
import experiment
import export
from conftest import (ROOT, TINY_DIM as DIM, TINY_NET_SIZE as NET_SIZE, assert_close_float32,
                      randomize, read_h5, slim_names, tf2_experiment, write_smooth_images)
from model import build_model

NET = 'small_cnn'
# Two images of one size make a serve_images batch; the others need up- and downscaling.
SIZES = [(64, 32), (50, 23), (17, 9), (64, 32), (33, 70)]
# Runs in tmp_path with PYTHONPATH unset: this project cannot be imported there.
SERVICE = '''
import sys
import numpy as np
import tensorflow as tf
export, files = sys.argv[1], sys.argv[2:]
model = tf.saved_model.load(export + '/saved_model')
data = [open(f, 'rb').read() for f in files]
out = model.signatures['serve_jpeg'](jpeg_bytes=tf.constant(data))
for key, value in out.items():
    np.save(f'jpeg_{key}.npy', value.numpy())
images = [tf.io.decode_image(d, channels=3, expand_animations=False) for d in data]
single = [model.signatures['serve_images'](images=im[None])['embeddings'] for im in images]
np.save('images_single.npy', np.concatenate(single))
np.save('images_pair.npy', model.signatures['serve_images'](
    images=tf.stack([images[0], images[3]]))['embeddings'].numpy())
features = np.load('features.npy')
np.save('features.out.npy', model.signatures['serve_features'](
    images=tf.constant(features))['embeddings'].numpy())
project = {'common', 'embed', 'experiment', 'export', 'layers', 'nets', 'heads'}
assert not project & set(sys.modules), project & set(sys.modules)
try:
    import onnxruntime
except ImportError:
    sys.exit(0)
session = onnxruntime.InferenceSession(export + '/model.onnx')
np.save('onnx.npy', session.run(['embeddings'], {'images': features})[0])
'''


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """JPEG, PNG and greyscale PNG files of several sizes: (image_root, dataset csv, paths)."""
    root = tmp_path_factory.mktemp('images')
    fids = [f'{i:04d}.' + ['jpg', 'png', 'grey.png'][i % 3] for i in range(len(SIZES))]
    write_smooth_images(root, fids, SIZES)
    paths = [root / fid for fid in fids]
    dataset = root / 'files.csv'
    dataset.write_text(''.join(f'p{i},{p.name}\n' for i, p in enumerate(paths)))
    return root, dataset, paths


@pytest.fixture(scope='module')
def trained(tmp_path_factory, images):
    """A train.py experiment root of the tiny net with a `_normalize` head (checkpoints 0, 5)."""
    root = tmp_path_factory.mktemp('experiment')
    tf2_experiment(root, images[0], net=NET, head='fc1024_normalize', steps=(0, 5))
    return root


def restored(root: Path, checkpoint: str | None = None):
    """The Keras model of an experiment root with the weights embed.py would load."""
    args = experiment.read_args(root / 'args.json')
    model = build_model(args['model_name'], args['head_name'], args['embedding_dim'])
    path = root / checkpoint if checkpoint else experiment.latest_checkpoint(root)
    experiment.restore_model(model, path, DIM, experiment.is_tf1_checkpoint(path), None)
    return model


def serve(folder: Path, paths: list[Path], features: np.ndarray, tmp_path: Path) -> dict:
    """Runs SERVICE on the export in a fresh process; returns what it saved, by file stem."""
    tmp_path.mkdir()
    (tmp_path / 'service.py').write_text(SERVICE)
    np.save(tmp_path / 'features.npy', features)
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    done = subprocess.run([sys.executable, 'service.py', str(folder), *map(str, paths)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {p.name[:-len('.npy')]: np.load(p) for p in tmp_path.glob('*.npy')}


def embed_files(root: Path, dataset: Path, out: Path, *flags: str) -> np.ndarray:
    embed.main(['--experiment_root', str(root), '--dataset', str(dataset), '--quiet',
                '--filename', str(out), *flags])
    return read_h5(out)['emb']


def features_of(paths: list[Path], legacy_resize: bool = False) -> np.ndarray:
    """The net inputs embed.py makes of the files: (N, h, w, 3) float32."""
    return np.concatenate([embed.augment(common.read_image(str(p)), NET_SIZE, NET_SIZE, False,
                                         None, legacy_resize).numpy() for p in paths])


# ----------------------------------------------------------------------------- equality
def test_fresh_process_gets_embed_pys_embeddings(tmp_path, trained, images):
    image_root, dataset, paths = images
    export.main(['--experiment_root', str(trained), '--output', str(tmp_path / 'export'),
                 '--quiet'])
    features = features_of(paths)
    got = serve(tmp_path / 'export', paths, features, tmp_path / 'service')
    model = restored(trained)
    want = embed_files(trained, dataset, tmp_path / 'emb.h5', '--batch_size', str(len(paths)))

    # Same decoder and resize as embed.py: equal up to the kernels' float32 rounding.
    assert_close_float32(got['jpeg_embeddings'], want, model)
    assert_close_float32(got['images_single'], want, model)
    assert_close_float32(got['images_pair'], want[[0, 3]], model)
    keras_out = embed.forward_pass(model)(features).numpy()
    assert_close_float32(got['features.out'], keras_out, model)
    # The _normalize head: `embeddings` on the unit sphere, `embeddings_raw` before that.
    raw = got['jpeg_embeddings_raw']
    np.testing.assert_allclose(np.linalg.norm(got['jpeg_embeddings'], axis=1), 1, atol=1e-6)
    assert_close_float32(got['jpeg_embeddings'],
                         raw / np.linalg.norm(raw, axis=1, keepdims=True), model)

    info = json.loads((tmp_path / 'export' / 'signature.json').read_text())
    assert info['net_input_size'] == list(NET_SIZE) and info['embedding_dim'] == DIM
    assert info['checkpoint'].endswith('checkpoint-5') and not info['flip_augment']
    assert info['training_args']['head_name'] == 'fc1024_normalize'
    jpeg = info['saved_model']['signatures']['serve_jpeg']
    assert set(jpeg['outputs']) == {'embeddings', 'embeddings_raw'}
    assert 'serve_jpeg' in (tmp_path / 'export' / 'README.txt').read_text()
    assert not list(tmp_path.glob('export.*'))  # no temporary folder left

    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed: pip install -r '
                        'requirements-export.txt to test model.onnx')
    assert info['onnx']['inputs'][0]['shape'] == [None, *NET_SIZE, 3]
    assert_close_float32(got['onnx'], keras_out, model)


def test_2017_root_with_baked_flip(tmp_path, images, write_tf1_checkpoint):
    # A 2017 TF1 root: TF1's resize, as embed.py uses for it; flip averaging baked in.
    image_root, dataset, paths = images
    keras.utils.set_random_seed(0)
    model = build_model(NET, 'fc1024', DIM)
    randomize(model, seed=3)
    root = tmp_path / 'old'
    root.mkdir()
    write_tf1_checkpoint(root / 'checkpoint-25000', slim_names(model), global_step=25000)
    (root / 'args.json').write_text(json.dumps({
        'model_name': NET, 'head_name': 'fc1024', 'embedding_dim': DIM, 'flip_augment': True,
        'image_root': str(image_root),
        'net_input_height': NET_SIZE[0], 'net_input_width': NET_SIZE[1]}))
    export.main(['--experiment_root', str(root), '--output', str(tmp_path / 'export'),
                 '--flip_augment', '--aggregator', 'mean', '--quiet'])
    features = features_of(paths, legacy_resize=True)
    got = serve(tmp_path / 'export', paths, features, tmp_path / 'service')
    want = embed_files(root, dataset, tmp_path / 'emb.h5', '--flip_augment', '--aggregator',
                       'mean', '--batch_size', str(2 * len(paths)))
    assert set(got) >= {'jpeg_embeddings'} and 'jpeg_embeddings_raw' not in got
    assert_close_float32(got['jpeg_embeddings'], want, model)
    assert_close_float32(got['images_single'], want, model)
    info = json.loads((tmp_path / 'export' / 'signature.json').read_text())
    assert info['flip_augment'] and info['checkpoint_format'] == 'TensorFlow 1 (2017 code)'

    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed: pip install -r '
                        'requirements-export.txt to test model.onnx')
    flipped = np.stack([features, features[:, :, ::-1]], 1).reshape(-1, *features.shape[1:])
    keras_out = embed.forward_pass(model)(flipped).numpy().reshape(len(paths), 2, DIM).mean(1)
    assert_close_float32(got['onnx'], keras_out, model)


# ----------------------------------------------------------------------------- files and errors
def test_without_onnx_packages_the_saved_model_is_written(tmp_path, trained, monkeypatch,
                                                          capsys):
    output = tmp_path / 'export'
    output.mkdir()
    (output / 'old.txt').write_text('replaced by --overwrite')
    monkeypatch.setitem(sys.modules, 'tf2onnx', None)  # import tf2onnx raises ImportError
    export.main(['--experiment_root', str(trained), '--output', str(output), '--overwrite',
                 '--checkpoint', 'checkpoint-0'])
    assert sorted(p.name for p in output.iterdir()) == ['README.txt', 'saved_model',
                                                        'signature.json']
    info = json.loads((output / 'signature.json').read_text())
    assert info['onnx'] is None and info['checkpoint'].endswith('checkpoint-0')
    notes = [line for line in capsys.readouterr().err.splitlines() if 'model.onnx' in line]
    assert len(notes) == 1 and 'pip install -r requirements-export.txt' in notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['export']


def test_a_failed_export_leaves_nothing_behind(tmp_path, trained, monkeypatch):
    output = tmp_path / 'export'
    output.mkdir()
    (output / 'old.txt').write_text('kept')

    def fail(*args):
        raise RuntimeError('disk full')
    monkeypatch.setattr(export, 'write_onnx', fail)
    with pytest.raises(RuntimeError, match='disk full'):
        export.main(['--experiment_root', str(trained), '--output', str(output), '--overwrite',
                     '--quiet'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['export']
    assert [p.name for p in output.iterdir()] == ['old.txt']


@pytest.mark.parametrize('case, culprit', [
    ('missing root', 'is not a folder'), ('empty root', 'no checkpoint in'),
    ('unknown checkpoint', 'checkpoint-7'), ('output not empty', '--overwrite'),
    ('output is the root', 'would replace the experiment root'),
    ('flip without aggregator', '--aggregator')])
def test_bad_input_is_refused_before_any_work(tmp_path, trained, case, culprit):
    root, output, flags = trained, tmp_path / 'export', []
    if case == 'missing root':
        root = tmp_path / 'nothing'
    elif case == 'empty root':
        root = tmp_path / 'empty'
        root.mkdir()
        (root / 'args.json').write_text((trained / 'args.json').read_text())
    elif case == 'unknown checkpoint':
        flags = ['--checkpoint', 'checkpoint-7']
    elif case == 'output not empty':
        output.mkdir()
        (output / 'keep.txt').write_text('mine')
    elif case == 'output is the root':
        output, flags = trained, ['--overwrite']
    else:
        flags = ['--flip_augment']
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(common.InputError, match=culprit):
        export.main(['--experiment_root', str(root), '--output', str(output), *flags])
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_command_line_error_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / 'export.py'), '--experiment_root',
                           str(tmp_path / 'nothing'), '--output', str(tmp_path / 'export')],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f'export.py: error: experiment root {tmp_path / "nothing"} is not a folder']
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_onnx_holds_the_constants_the_model_captures(tmp_path):
    # ResNet subtracts its RGB means, a tensor the traced function captures: tf2onnx alone
    # would make it a second input of model.onnx, to be fed by the caller.
    onnxruntime = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed: pip '
                                      'install -r requirements-export.txt to test model.onnx')
    pytest.importorskip('tf2onnx', reason='tf2onnx is not installed: pip install -r '
                        'requirements-export.txt to test model.onnx')
    import tensorflow as tf
    images = keras.Input((4, 2, 3), name='images')
    centred = images - keras.ops.convert_to_tensor(np.array([10, 20, 30], np.float32))
    model = keras.Model(images, keras.layers.Dense(2)(keras.layers.Flatten()(centred)))
    function = tf.function(lambda images: {'embeddings': model(images)},
                           input_signature=[tf.TensorSpec((None, 4, 2, 3), name='images')])
    assert export.write_onnx(function, tmp_path / 'model.onnx', logging.getLogger())
    session = onnxruntime.InferenceSession(str(tmp_path / 'model.onnx'))
    assert [i.name for i in session.get_inputs()] == ['images']
    batch = np.random.default_rng(0).uniform(0, 255, (3, 4, 2, 3)).astype(np.float32)
    assert_close_float32(session.run(None, {'images': batch})[0], model(batch).numpy(), model)


def test_bnneck_root_exports_embed_pys_features_without_the_classifier(tmp_path, images,
                                                                       monkeypatch):
    # A strong-baseline root: BNNeck with its classifier (ID loss), GeM, stored in args.json.
    import tensorflow as tf
    image_root, dataset, paths = images
    root = tmp_path / 'bnneck'
    settings = {'num_classes': 5, 'pooling': 'gem'}
    keras.utils.set_random_seed(0)
    model = build_model(NET, 'bnneck', DIM, **settings)
    tf2_experiment(root, image_root, net=NET, head='bnneck', model=model, **settings)
    monkeypatch.setitem(sys.modules, 'tf2onnx', None)  # the SavedModel is enough here
    export.main(['--experiment_root', str(root), '--output', str(tmp_path / 'export'),
                 '--quiet'])
    want = embed_files(root, dataset, tmp_path / 'emb.h5')
    # embed.py writes BN(f), the inference feature, not f.
    features = features_of(paths)
    out = model(features, training=False)
    assert_close_float32(want, out['emb'].numpy(), model)
    assert np.abs(want - out['train_emb'].numpy()).max() > 0.1
    loaded = tf.saved_model.load(str(tmp_path / 'export' / 'saved_model'))
    got = loaded.signatures['serve_features'](images=tf.constant(features))
    assert set(got) == {'embeddings'}  # emb_raw is emb: nothing more to serve
    assert_close_float32(got['embeddings'].numpy(), want, model)
    stored = tf.train.list_variables(str(tmp_path / 'export' / 'saved_model' / 'variables' /
                                         'variables'))
    shapes = [tuple(shape) for _, shape in stored]
    assert (128, DIM) in shapes and (DIM, 5) not in shapes, stored  # bnneck.fc, no classifier
    trained = tf.train.list_variables(str(root / 'checkpoint-0'))
    assert (DIM, 5) in [tuple(shape) for _, shape in trained]  # the classifier left out
