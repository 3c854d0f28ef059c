"""README.md's commands, run as written on small trees of the real layouts (demo.sh: test_demo.py).

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
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from conftest import ROOT

from model import build_model, slim_name
import trinet_embed

CI_COMMANDS = ('python3 -m venv', '.venv/bin/')  # set-up and test commands: .ci/run runs them
READERS = ('embed.py', 'export.py')  # they only read an experiment root's checkpoints
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
    """Train ids 1-4, test ids 5-8 (query in camera 1, gallery in 2 and 3), junk, distractors,
    and the hand-drawn boxes of the queries (gt_bbox: the query's own and one more).

    The test set has more than 20 images besides junk: re-ranking's default k1 needs 21.
    """
    train = [pattern.format(pid=pid, cam=cam, n=n) for pid in range(1, 5) for cam in (1, 2)
             for n in (1, 2)]
    query = [pattern.format(pid=pid, cam=1, n=9) for pid in range(5, 9)]
    test = [pattern.format(pid=pid, cam=cam, n=n) for pid in range(5, 9) for cam in (2, 3)
            for n in (3, 4, 6)] + [pattern.format(pid=0, cam=2, n=5)]
    gt_bbox = [pattern.format(pid=pid, cam=1, n=n) for pid in range(5, 9) for n in (9, 10)]
    return {'bounding_box_train': train, 'query': query, 'bounding_box_test': test,
            'gt_bbox': gt_bbox}


def slim_resnet_v1_50(path, write_tf1_checkpoint) -> str:
    """A stand-in for slim's resnet_v1_50.ckpt: V1 format, slim names, ImageNet logits."""
    model = build_model('resnet_v1_50', 'direct', 8)
    values = {slim_name(layer, v): v.numpy() for layer in model.layers
              for v in layer.weights if layer.name.startswith('resnet_v1_50.')}
    values['resnet_v1_50/logits/weights'] = np.zeros((1, 1, 2048, 10), np.float32)
    return write_tf1_checkpoint(path, values, 'V1')


def trinet_npz(path) -> None:
    """A stand-in for trinet-market1501.npz: arr_0 ... arr_272 in Lasagne's order."""
    rng = np.random.default_rng(0)
    arrays = [rng.normal(0, 0.02, shape).astype(np.float32) for _, shape in
              trinet_embed.param_layout()]
    np.savez(path, *arrays)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, write_tf1_checkpoint):
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
    write_reid_tree(tmp / 'distractors_500k', {'images': [
        f'0000_c{cam}s1_{n:06d}_00.jpg' for cam in (1, 2, 3) for n in (100, 101)]}, seed=2)
    checkpoint = slim_resnet_v1_50(tmp / 'resnet_v1_50.ckpt', write_tf1_checkpoint)
    trinet_npz(tmp / 'trinet-market1501.npz')
    trinet_npz(tmp / 'trinet-mars.npz')
    # MARS's layout, names and info/ files, with few short tracklets: TriNet embeds each frame.
    subprocess.run([sys.executable, str(ROOT / 'data' / 'make_demo.py'), '--video', '--out',
                    str(tmp / 'MARS'), '--train_ids', '1', '--test_ids', '2', '--cameras', '2',
                    '--distractors', '1', '--junk', '1', '--max_frames', '2', '--height', '64',
                    '--width', '32'], check=True, capture_output=True)
    (work / 'files.txt').write_text(f'{market}/query/0005_c1s1_000009_00.jpg\n'
                                    f'{market}/query/0006_c1s1_000009_00.jpg\n')
    swaps = {'/data/Market-1501-v15.09.15': str(market), '/data/DukeMTMC-reID':
             str(tmp / 'DukeMTMC-reID'), '/data/distractors_500k': str(tmp / 'distractors_500k'),
             'resnet_v1_50.ckpt': checkpoint,
             'trinet-market1501.npz': str(tmp / 'trinet-market1501.npz'),
             'trinet-mars.npz': str(tmp / 'trinet-mars.npz'), '/data/MARS': str(tmp / 'MARS')}
    return work, tmp / 'home', swaps


def run(command, work, home, timeout=300):
    env = {**os.environ, 'HOME': str(home),
           'PATH': f'{os.path.dirname(sys.executable)}{os.pathsep}{os.environ["PATH"]}'}
    return subprocess.run(['bash', '-c', command], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)


def groups(commands: list[str]) -> dict[str, list[str]]:
    """The commands by what they work on: an experiment root (~/experiments/NAME) or, for the
    others, their script. Each group runs in README order; groups share nothing but data/."""
    grouped = {}
    for command in commands:
        match = re.search(r'~/experiments/(\w+)', command)
        grouped.setdefault(match[1] if match else command.split()[1], []).append(command)
    return grouped


@pytest.mark.slow
def test_every_readme_command_runs(workdir):
    work, home, swaps = workdir
    commands = []
    for command in readme_commands():
        if command.startswith(CI_COMMANDS):
            assert 'pytest' in command or 'ruff' in command or 'pip install' in command, command
            continue
        for placeholder, path in swaps.items():
            command = command.replace(placeholder, path)
        if re.match(r'(bash \S+_train\.sh|python train\.py --train_set)', command):
            command += ' ' + ' '.join(TINY_TRAINING)
        if command.startswith('python train.py --train_set'):
            command += ' --model_name mobilenet_v1_0_25'  # no checkpoint to fit: the tiny net
        commands.append(command)
    assert any(c.startswith('python evaluate.py') for c in commands)  # the parser found blocks

    def run_one(command: str) -> tuple[str, subprocess.CompletedProcess]:
        done = run(command, work, home)
        assert done.returncode == 0, f'{command}\n{done.stderr[-3000:]}'
        return command, done

    def run_group(group: list[str]) -> list[tuple[str, subprocess.CompletedProcess]]:
        # Training first, in README order; then embed.py and export.py, which only read the
        # checkpoints, two at a time; then evaluate.py and search.py, which read their outputs.
        later = ('evaluate.py', 'search.py')
        stages = [[c for c in group if c.split()[1] not in READERS + later],
                  [c for c in group if c.split()[1] in READERS],
                  [c for c in group if c.split()[1] in later]]
        with ThreadPoolExecutor(2) as pool:
            return ([run_one(c) for c in stages[0]] + list(pool.map(run_one, stages[1]))
                    + [run_one(c) for c in stages[2]])

    # data/prepare.py writes the CSVs that the training scripts read: first. Then the groups two
    # at a time, one per core: most of a tiny run is TensorFlow's single-threaded start.
    grouped = groups(commands)
    ran = run_group(grouped.pop('data/prepare.py'))
    with ThreadPoolExecutor(2) as pool:
        for done in pool.map(run_group, grouped.values()):
            ran += done
    scripts = {command.split()[1] for command, _ in ran}
    assert scripts >= {'data/prepare.py', 'market1501_train.sh', 'duke_mtmc_train.sh', 'train.py',
                       'embed.py', 'evaluate.py', 'trinet_embed.py', 'export.py', 'search.py'}

    # What the commands were to produce is there.
    experiments = home / 'experiments'
    assert (work / 'data' / 'duke_train.csv').exists()
    for name in ('market1501', 'duke', 'my_experiment'):
        assert (experiments / name / 'args.json').exists()
    assert json.loads((experiments / 'market1501' / 'args.json').read_text())[
        'initial_checkpoint'] == swaps['resnet_v1_50.ckpt']
    assert (experiments / 'market1501' / 'export' / 'saved_model' / 'saved_model.pb').exists()
    result = json.loads((experiments / 'market1501' / 'market1501_evaluation.json').read_text())
    assert len(result['aps']) == 4 and 0 <= result['mAP'] <= 1
    reranked = json.loads((experiments / 'market1501' / 'market1501_reranked_evaluation.json')
                          .read_text())
    assert reranked['rerank'] == {'k1': 20, 'k2': 6, 'lambda_value': 0.3}
    assert len((work / 'data' / 'market1501_gt_bbox.csv').read_text().splitlines()) == 8
    assert len((work / 'data' / 'market1501_test_500k.csv').read_text().splitlines()) == 32
    evaluate_output = next(d.stdout for c, d in ran if c.startswith('python evaluate.py'))
    assert evaluate_output.startswith('mAP: ')
    mars = json.loads((experiments / 'mars_trinet' / 'mars_evaluation.json').read_text())
    assert mars['tracklets']['pooling'] == 'max' and mars['ap'] == 'market1501'
    assert len(mars['aps']) == mars['tracklets']['query_tracklets'] > 0
    results = (experiments / 'market1501' / 'results.jsonl').read_text().splitlines()
    assert len(results) == 4 and len(json.loads(results[0])['results']) == 5
    assert (experiments / 'my_experiment' / 'market1501_test_embeddings.h5').exists()
    trinet_lines = (work / 'embeddings.csv').read_text().splitlines()
    assert len(trinet_lines) == 2 and len(trinet_lines[0].split(',')) == 129
