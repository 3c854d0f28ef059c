"""README.md's commands, run as written on small trees of the real layouts, and demo.sh.

Every command in a code block of the README runs here, after the placeholders that stand for
a user's files (dataset folders, slim's resnet_v1_50.ckpt, the TriNet npz, ~) are swapped for
ones this test writes in the same formats. Training commands get flags appended that make
them tiny (the scripts forward extra flags, and the last one wins). The commands that set up a
virtual environment and run the tests are what .ci/run runs.
"""
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT
from test_checkpoints import random_values, slim_resnet_shapes, write_tf1_checkpoint
from test_trinet_embed import random_arrays

CI_COMMANDS = ('python3 -m venv', '.venv/bin/')  # set-up and test commands: .ci/run runs them
TINY_TRAINING = ['--train_iterations', '2', '--batch_p', '2', '--batch_k', '2',
                 '--net_input_height', '64', '--net_input_width', '32', '--pre_crop_height', '72',
                 '--pre_crop_width', '36', '--loading_threads', '2', '--seed', '1']


def readme_commands() -> list[str]:
    """The commands of the README's shell code blocks, continuation lines joined.

    Blocks marked with another language (```bibtex) are not commands.
    """
    commands, block, shell = [], None, False
    for line in (ROOT / 'README.md').read_text().splitlines():
        if line.startswith('```') and block is None:
            block, shell = [], line.strip('`').strip() in ('', 'bash', 'sh')
        elif line.startswith('```'):
            commands.extend(_join(block) if shell else [])
            block = None
        elif block is not None:
            block.append(line)
    return commands


def _join(lines: list[str]) -> list[str]:
    text = '\n'.join(lines).replace('\\\n', ' ')
    return [' '.join(line.split()) for line in text.splitlines() if line.strip()]


def write_reid_tree(root, names_by_folder, seed):
    """Small JPEGs named like the dataset's files; each identity has its own colours."""
    rng = np.random.default_rng(seed)
    colours = {}
    for folder, names in names_by_folder.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            pid = name.split('_')[0]
            top, bottom = colours.setdefault(pid, rng.integers(0, 256, (2, 3)))
            image = np.empty((64, 32, 3))
            image[:32], image[32:] = top, bottom
            image += rng.normal(0, 8, image.shape)
            cv2.imwrite(str(root / folder / name), np.clip(image, 0, 255).astype(np.uint8))


def market_names(pattern):
    """Train ids 1-4, test ids 5-8 (query in camera 1, gallery in 2 and 3), junk, distractors."""
    train = [pattern.format(pid=pid, cam=cam, n=n) for pid in range(1, 5) for cam in (1, 2)
             for n in (1, 2)]
    query = [pattern.format(pid=pid, cam=1, n=9) for pid in range(5, 9)]
    test = [pattern.format(pid=pid, cam=cam, n=n) for pid in range(5, 9) for cam in (2, 3)
            for n in (3, 4)] + [pattern.format(pid=0, cam=2, n=5)]
    return {'bounding_box_train': train, 'query': query, 'bounding_box_test': test}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A copy of the checkout's layout (links) whose data/ and home are the test's own."""
    tmp = tmp_path_factory.mktemp('readme')
    work = tmp / 'work'
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ('data', 'experiments') and not entry.name.startswith('.'):
            (work / entry.name).symlink_to(entry)
    (work / 'data').mkdir()
    for entry in (ROOT / 'data').glob('*.py'):
        (work / 'data' / entry.name).symlink_to(entry)
    (tmp / 'home').mkdir()

    market = tmp / 'Market-1501-v15.09.15'
    write_reid_tree(market, market_names('{pid:04d}_c{cam}s1_{n:06d}_00.jpg'), seed=0)
    (market / 'bounding_box_test' / '-1_c1s1_000007_00.jpg').write_bytes(
        (market / 'query' / '0005_c1s1_000009_00.jpg').read_bytes())  # a junk image
    write_reid_tree(tmp / 'DukeMTMC-reID', market_names('{pid:04d}_c{cam}_f{n:07d}.jpg'), seed=1)
    checkpoint = write_tf1_checkpoint(
        tmp / 'resnet_v1_50.ckpt',
        {**random_values(slim_resnet_shapes('resnet_v1_50', (3, 4, 6, 3))),
         'resnet_v1_50/logits/weights': np.zeros((1, 1, 2048, 10), np.float32)}, 'V1')
    np.savez(tmp / 'trinet-market1501.npz', *random_arrays())
    (work / 'files.txt').write_text(f'{market}/query/0005_c1s1_000009_00.jpg\n'
                                    f'{market}/query/0006_c1s1_000009_00.jpg\n')
    swaps = {'/data/Market-1501-v15.09.15': str(market), '/data/DukeMTMC-reID':
             str(tmp / 'DukeMTMC-reID'), 'resnet_v1_50.ckpt': checkpoint,
             'trinet-market1501.npz': str(tmp / 'trinet-market1501.npz')}
    return work, tmp / 'home', swaps


def run(command, work, home, timeout=300):
    env = {**os.environ, 'HOME': str(home),
           'PATH': f'{os.path.dirname(sys.executable)}{os.pathsep}{os.environ["PATH"]}'}
    return subprocess.run(['bash', '-c', command], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_every_readme_command_runs(workdir):
    work, home, swaps = workdir
    commands = readme_commands()
    assert any(c.startswith('python evaluate.py') for c in commands)  # the parser found blocks
    ran = []
    for command in commands:
        if command.startswith(CI_COMMANDS):
            assert 'pytest' in command or 'ruff' in command or 'pip install' in command, command
            continue
        for placeholder, path in swaps.items():
            command = command.replace(placeholder, path)
        if re.match(r'(bash \S+_train\.sh|python train\.py --train_set)', command):
            command += ' ' + ' '.join(TINY_TRAINING)
        done = run(command, work, home)
        assert done.returncode == 0, f'{command}\n{done.stderr[-3000:]}'
        ran.append((command, done))
    scripts = {command.split()[1] for command, _ in ran}
    assert scripts >= {'data/prepare.py', 'market1501_train.sh', 'duke_mtmc_train.sh', 'train.py',
                       'embed.py', 'evaluate.py', 'trinet_embed.py'}

    # What the commands were to produce is there.
    experiments = home / 'experiments'
    assert (work / 'data' / 'duke_train.csv').exists()
    for name in ('market1501', 'duke', 'my_experiment'):
        assert (experiments / name / 'args.json').exists()
    assert json.loads((experiments / 'market1501' / 'args.json').read_text())[
        'initial_checkpoint'] == swaps['resnet_v1_50.ckpt']
    result = json.loads((experiments / 'market1501' / 'market1501_evaluation.json').read_text())
    assert len(result['aps']) == 4 and 0 <= result['mAP'] <= 1
    evaluate_output = next(d.stdout for c, d in ran if c.startswith('python evaluate.py'))
    assert evaluate_output.startswith('mAP: ')
    trinet_lines = (work / 'embeddings.csv').read_text().splitlines()
    assert len(trinet_lines) == 2 and len(trinet_lines[0].split(',')) == 129


def test_demo_runs_and_training_helps(tmp_path):
    env = {**os.environ, 'DEMO_DATA': str(tmp_path / 'demo'),
           'DEMO_EXPERIMENT': str(tmp_path / 'experiment'),
           'PATH': f'{os.path.dirname(sys.executable)}{os.pathsep}{os.environ["PATH"]}'}
    done = subprocess.run(['bash', str(ROOT / 'demo.sh'), '--train_iterations', '60',
                           '--decay_start_iteration', '40', '--seed', '1'],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    maps = [float(m) for m in re.findall(r'^mAP: ([\d.]+)%', done.stdout, re.MULTILINE)]
    assert len(maps) == 2 and '== untrained network:' in done.stdout, done.stdout
    untrained, trained = maps
    assert trained > untrained + 5, done.stdout  # percentage points
