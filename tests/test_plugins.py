"""A new net, head and excluder are one file each: dropped into a copy of the project, they are
found by name, pass the generic plug-in tests, and run through train -> embed -> evaluate with
no other edit."""
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT

PLUGINS = {
    'nets/tiny_net.py': '''"""Two strided convolutions, no batch norm: the least a net needs."""
import keras


def endpoints(images) -> dict:
    x = keras.layers.Conv2D(8, 3, strides=2, activation='relu', name='tiny.conv1')(images / 255)
    x = keras.layers.Conv2D(16, 3, strides=2, activation='relu', name='tiny.conv2')(x)
    return {'model_output': keras.layers.GlobalAveragePooling2D(name='tiny.pool')(x)}
''',
    'heads/tiny_head.py': '''"""One linear layer under another name than the paper's heads use."""
import keras


def endpoints(endpoints: dict, embedding_dim: int) -> dict:
    emb = keras.layers.Dense(embedding_dim, name='tiny_linear')(endpoints['model_output'])
    return {**endpoints, 'emb_raw': emb, 'emb': emb}
''',
    'excluders/tiny_folders.py': '''"""Ignores the gallery images of the query's own folder."""
import numpy as np

EXAMPLES = ['cam_a/0001.jpg', 'cam_b/0001.jpg', 'cam_b/0002.jpg']


class Excluder:
    def __init__(self, gallery_fids: np.ndarray):
        self.folders = np.array([str(fid).rsplit('/', 1)[0] for fid in gallery_fids])

    def __call__(self, query_fids: np.ndarray) -> np.ndarray:
        folders = np.array([str(fid).rsplit('/', 1)[0] for fid in query_fids])
        return folders[:, None] == self.folders[None, :]
''',
}


def write_images(root, rng) -> dict[str, list[str]]:
    """Identities as two colours; train ids 0-7 in both folders, test ids 8-11."""
    rows = {'train': [], 'query': [], 'test': []}
    for pid in range(12):
        top, bottom = rng.integers(0, 256, (2, 3))
        for folder in ('cam_a', 'cam_b'):
            for n in range(3):
                image = np.empty((32, 16, 3))
                image[:16], image[16:] = top, bottom
                fid = f'{folder}/{pid:04d}_{n}.png'
                (root / folder).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / fid), np.clip(image + rng.normal(0, 5, image.shape), 0,
                                                     255).astype(np.uint8))
                split = 'train' if pid < 8 else 'query' if folder == 'cam_a' and n == 0 else 'test'
                rows[split].append(f'{pid},{fid}')
    return rows


@pytest.mark.slow
def test_new_plugins_need_no_other_edit(tmp_path):
    project = tmp_path / 'project'
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(
        '.venv', '.git', 'experiments', 'demo', '__pycache__', '.*_cache'))
    for path, source in PLUGINS.items():
        (project / path).write_text(source)
    data = tmp_path / 'data'
    for split, lines in write_images(data, np.random.default_rng(0)).items():
        (data / f'{split}.csv').write_text('\n'.join(lines) + '\n')

    def run(*command):
        done = subprocess.run([sys.executable, *map(str, command)], cwd=project,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f'{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}'
        return done

    # The generic plug-in tests pick the new files up by themselves.
    run('-m', 'pytest', '-q', '-n', '0', '-p', 'no:cacheprovider', 'tests/test_nets.py',
        'tests/test_heads.py', 'tests/test_excluders.py', '-k', 'tiny')
    exp = tmp_path / 'exp'
    run('train.py', '--train_set', data / 'train.csv', '--image_root', data, '--experiment_root',
        exp, '--model_name', 'tiny_net', '--head_name', 'tiny_head', '--embedding_dim', '4',
        '--batch_p', '4', '--batch_k', '2', '--net_input_height', '32', '--net_input_width', '16',
        '--train_iterations', '3', '--loading_threads', '2')
    for split in ('query', 'test'):
        run('embed.py', '--experiment_root', exp, '--dataset', data / f'{split}.csv', '--quiet')
    done = run('evaluate.py', '--excluder', 'tiny_folders', '--query_dataset', data / 'query.csv',
               '--query_embeddings', exp / 'query_embeddings.h5', '--gallery_dataset',
               data / 'test.csv', '--gallery_embeddings', exp / 'test_embeddings.h5')
    assert done.stdout.startswith('mAP: ')
