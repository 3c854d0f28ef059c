"""Fuzz: every script, fed generated bad inputs, ends in a one-line error or a correct result.

The inputs come from one seeded generator (SEED): truncated, zero-byte and garbage JPEG and PNG
files; CSVs with a byte-order mark, CRLF, quotes, blank lines, missing columns, bytes that are
not UTF-8, repeated rows, paths with spaces, commas and non-ASCII letters; HDF5 files with other
dataset names, dtypes and shapes, NaN and inf, or nothing; args.json files cut short, nested or
with values of the wrong type; cut TensorFlow checkpoints; npz files with arrays missing, extra,
pickled or of the wrong shape. Each case runs the script as a command line (script_runner.py:
forks of one process that has imported TensorFlow once) with a time limit, then checks:

- an error: exit code 2, the last line of standard error is `script: error: ...` and names the
  culprit (file, and line where there is one), and no traceback anywhere;
- a result: exit code 0, and the output equals that of the clean input;
- either way: no hang (killed after TIMEOUT s), and the output folder holds no new temporary or
  partial file; after an error it is exactly as before.

Each test reports its cases and their outcomes; conftest.py prints them at the end of the pytest
run.
"""
import collections
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ROOT, TINY_DIM, TINY_HEAD, TINY_NET, write_smooth_images
from script_runner import ScriptRunner

import common
import trinet_embed

SEED = 15
TIMEOUT = 60  # seconds per case; the slowest clean case takes a few
# Market-1501 names, so that the market1501 excluder parses them: 4 identities, 2 cameras.
FIDS = [f'images/{pid:04d}_c{cam}s1_00000{cam}_00.{"png" if pid == 2 else "jpg"}'
        for pid in range(1, 5) for cam in (1, 2)]
# The folder part of a file name may hold anything a file system allows.
ODD_FOLDER = 'odd dir, ünïcödé 人/ sp '


# ----------------------------------------------------------------------------- running cases
def snapshot(folder: Path) -> dict:
    """{relative path: (size, modification time)} of every file below `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob('*') if p.is_file()}


class Cases:
    """Runs one script's cases and keeps their problems, so that one run shows all of them."""

    def __init__(self, runner: ScriptRunner, script: str, folder: Path):
        self.runner, self.script, self.folder = runner, script, folder
        self.problems = []
        self.outcomes = collections.Counter()

    def run(self, name: str, argv: list, watch: Path | None = None, error: str | None = None,
            allowed: tuple[str, ...] = ()) -> dict | None:
        """Runs one case: `error` (a text the error line must hold) or None for a result.

        `watch` is the output folder: after an error it must be as before, except for the
        files named in `allowed` (e.g. train.log); after a result it may hold new files, but
        no temporary ones.
        """
        watch = watch or self.folder
        before = snapshot(watch)
        result = self.runner.run(self.script, argv, self.folder, TIMEOUT)
        print(f'{self.script} [{name}]: exit code {result["code"]} in {result["seconds"]:.2f} s')
        lines = result['stderr'].strip().split('\n')
        last = lines[-1] if lines else ''
        prefix = f'{self.script.split("/")[-1]}: error: '
        after = snapshot(watch)
        new = sorted(set(after) - set(before))
        leftovers = [p for p in new if '.tmp-' in p or '.old-' in p]
        changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p)
                         and Path(p).name not in allowed)
        problem = None
        if result['timed_out']:
            problem = f'no answer within {TIMEOUT} s'
        elif 'Traceback' in result['stderr']:
            problem = 'a traceback:\n' + result['stderr'][-3000:]
        elif error is not None and (result['code'] != 2 or not last.startswith(prefix)
                                    or error not in last):
            problem = (f'expected exit code 2 and an error line naming {error!r}; got '
                       f'{result["code"]}, last line {last!r}')
        elif sum(line.startswith(prefix) for line in lines) > 1:
            problem = f'more than one error line (a name forged one?): {lines}'
        elif error is None and result['code'] != 0:
            problem = f'exit code {result["code"]}: {last!r}'
        elif leftovers:
            problem = f'temporary files left: {leftovers}'
        elif error is not None and changed:
            problem = f'files written or changed by a failed run: {changed}'
        if problem:
            self.problems.append(f'{self.script} [{name}]: {problem}')
            return None
        self.outcomes['error' if error is not None else 'result'] += 1
        return result

    def same(self, name: str, got, want) -> None:
        """Records a problem if an accepted input gave another result than the clean one."""
        try:
            np.testing.assert_equal(got, want)
        except AssertionError as e:
            self.problems.append(f'{self.script} [{name}]: result differs from the clean '
                                 f'input\'s: {str(e)[:500]}')
            self.outcomes['result'] -= 1

    def check(self, record_property) -> None:
        """Reports the outcomes (for the summary of the pytest run), then fails on problems."""
        record_property('fuzz', f'{self.script}: {sum(self.outcomes.values())} cases, '
                                f'{self.outcomes["error"]} one-line errors, '
                                f'{self.outcomes["result"]} correct results'
                                + (f', {len(self.problems)} FAILED' if self.problems else ''))
        assert not self.problems, '\n'.join(self.problems)


@pytest.fixture(scope='module')
def runner():
    runner = ScriptRunner()
    yield runner
    runner.close()


# ----------------------------------------------------------------------------- generated inputs
def bad_images(rng: np.random.Generator, jpeg: bytes, png: bytes) -> dict[str, bytes]:
    """Image files that no decoder can read in full, by name."""
    return {'zero.jpg': b'', 'zero.png': b'',
            'truncated.jpg': jpeg[:rng.integers(len(jpeg) // 4, len(jpeg) - 2)],
            'truncated.png': png[:rng.integers(len(png) // 4, len(png) - 2)],
            'garbage.jpg': rng.bytes(int(rng.integers(1, 2000))),
            'header_only.jpg': jpeg[:4] + rng.bytes(int(rng.integers(10, 500))),
            'garbage.png': png[:8] + rng.bytes(int(rng.integers(10, 500)))}


def csv_text(rows: list[tuple[str, str]]) -> str:
    return ''.join(f'{pid},{fid}\n' for pid, fid in rows)


def accepted_csvs(rows: list[tuple[str, str]], rng: np.random.Generator) -> dict[str, tuple]:
    """CSV files that must give the result of the clean one: {name: (bytes, their rows)}.

    The rows differ from `rows` only where the file renames an image (a copy of the same
    pixels under an odd name) or repeats a line.
    """
    clean = csv_text(rows)
    quoted = ''.join(f'"{pid}","{fid}"\n' for pid, fid in rows)
    blank = rng.integers(1, len(rows))
    lines = clean.splitlines(keepends=True)
    odd = [(pid, f'{ODD_FOLDER}/{fid}' if i % 3 == 0 else fid) for i, (pid, fid) in enumerate(rows)]
    odd_text = ''.join(f'{pid},"{fid}"\n' for pid, fid in odd)
    repeat = int(rng.integers(len(rows)))
    return {'bom': (b'\xef\xbb\xbf' + clean.encode(), rows),
            'crlf': (clean.replace('\n', '\r\n').encode(), rows),
            'quotes': (quoted.encode(), rows),
            'blank lines': (''.join(lines[:blank] + ['\n', '  \n', '\r\n'] + lines[blank:]
                                    + ['\n']).encode(), rows),
            'spaces around fields': (''.join(f' {pid} ,  {fid}  \n' for pid, fid in rows).encode(),
                                     rows),
            'odd paths': (odd_text.encode(), odd),
            'repeated row': ((clean + lines[repeat]).encode(), rows + [rows[repeat]])}


def rejected_csvs(rows: list[tuple[str, str]], rng: np.random.Generator) -> dict[str, tuple]:
    """CSV files that must be refused: {name: (bytes, text the error names)}."""
    lines = csv_text(rows).encode().splitlines(keepends=True)
    at = int(rng.integers(1, len(lines)))  # a 0-based line, not the first
    byte = bytes([int(rng.integers(0x80, 0xc0))])  # a continuation byte cannot start a character
    cut = lines[at].rstrip(b'\n').split(b',')[0] + b'\n'
    return {'zero bytes': (b'', 'has no lines'),
            'only blank lines': (b'\n\n  \n', 'has no lines'),
            'missing column': (b''.join(lines[:at] + [cut] + lines[at + 1:]), f':{at + 1}:'),
            'extra column': (b''.join(lines[:at] + [lines[at].rstrip(b'\n') + b',x\n']
                                      + lines[at + 1:]), f':{at + 1}:'),
            'empty identity': (b''.join(lines[:at] + [b',' + lines[at].split(b',')[1]]
                                        + lines[at + 1:]), f':{at + 1}:'),
            'not UTF-8': (b''.join(lines[:at] + [lines[at][:3] + byte + lines[at][3:]]
                                   + lines[at + 1:]), f':{at + 1}:'),
            'NUL in a path': (b''.join(lines[:at] + [lines[at][:-5] + b'\0' + lines[at][-5:]]
                                       + lines[at + 1:]), f':{at + 1}:'),
            'open quote': (b''.join(lines[:at] + [b'"' + lines[at]] + lines[at + 1:]),
                           'dataset')}


def bad_args_json(good: dict, rng: np.random.Generator) -> dict[str, tuple[bytes, str]]:
    """args.json files that must be refused: {name: (bytes, text the error names)}."""
    text = json.dumps(good, indent=2).encode()
    int_key = 'embedding_dim'
    return {'cut short': (text[:rng.integers(1, len(text) - 1)], 'args.json'),
            'zero bytes': (b'', 'args.json'),
            'a list': (b'[1, 2]', 'args.json'),
            'deeply nested': (b'[' * 100_000 + b']' * 100_000, 'args.json'),
            'not UTF-8': (text.replace(b'"model_name"', b'"model\xff_name"'), 'args.json:'),
            'string for a number': (json.dumps({**good, int_key: str(good[int_key])}).encode(),
                                    int_key),
            'negative size': (json.dumps({**good, 'net_input_height': -3}).encode(),
                              'net_input_height'),
            'NaN': (json.dumps({**good, int_key: float('nan')}).encode(), int_key),
            'number for a name': (json.dumps({**good, 'model_name': 5}).encode(), 'model_name'),
            'unknown net': (json.dumps({**good, 'model_name': 'no_such_net'}).encode(),
                            'no_such_net')}


def cut_file(path: Path, rng: np.random.Generator) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:rng.integers(1, len(data))])


# ----------------------------------------------------------------------------- shared data
@pytest.fixture(scope='module')
def data(tmp_path_factory, runner):
    """Images (clean, bad, and copies under odd names), and an experiment root of the tiny
    net that train.py would have written (made in the runner, in a fork)."""
    folder = tmp_path_factory.mktemp('fuzz')
    rng = np.random.default_rng([SEED, 0])
    write_smooth_images(folder, FIDS, [(64, 32)] * len(FIDS), seed=SEED)
    for fid in FIDS[::3]:
        (folder / ODD_FOLDER / fid).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / fid, folder / ODD_FOLDER / fid)
    jpeg, png = (folder / FIDS[0]).read_bytes(), (folder / FIDS[2]).read_bytes()
    for name, content in bad_images(rng, jpeg, png).items():
        (folder / 'bad' / name).parent.mkdir(exist_ok=True)
        (folder / 'bad' / name).write_bytes(content)
    rows = [(fid.split('/')[1][:4], fid) for fid in FIDS]
    (folder / 'clean.csv').write_text(csv_text(rows))
    setup = folder / 'make_experiment.py'
    setup.write_text(
        'import sys\nfrom pathlib import Path\n'
        f'sys.path.insert(0, {str(Path(__file__).parent)!r})\n'
        'from conftest import tf2_experiment\n'
        'tf2_experiment(Path(sys.argv[1]), Path(sys.argv[2]), train_set=sys.argv[3], '
        'steps=(0, 2), train_iterations=2, checkpoint_frequency=1, seed=1, '
        'loading_threads=2)\n')
    done = runner.run(str(setup), [folder / 'exp', folder, folder / 'clean.csv'], folder, 120)
    assert done['code'] == 0, done['stderr'][-3000:]
    return folder, rows


# ----------------------------------------------------------------------------- evaluate.py
def test_evaluate(runner, data, tmp_path, record_property):
    folder, rows = data
    rng = np.random.default_rng([SEED, 1])
    cases = Cases(runner, 'evaluate.py', tmp_path)
    embs = np.random.default_rng(SEED).normal(size=(len(rows), 6)).astype(np.float32)
    with h5py.File(tmp_path / 'clean.h5', 'w') as f:
        f['emb'] = embs
    (tmp_path / 'clean.csv').write_text(csv_text(rows))

    def evaluate(name, csv='clean.csv', h5='clean.h5', error=None, out=None, extra=()):
        out = out or f'{sum(cases.outcomes.values()) + len(cases.problems)}.json'
        argv = ['--excluder', 'market1501', '--query_dataset', csv, '--query_embeddings', h5,
                '--gallery_dataset', csv, '--gallery_embeddings', h5, '--filename', out, *extra]
        result = cases.run(name, argv, error=error)
        if result is None or error is not None:
            return None
        got = json.loads((tmp_path / out).read_text())
        return {key: got[key] for key in ('mAP', 'mINP', 'CMC', 'aps')}

    clean = evaluate('clean')
    assert clean is not None, cases.problems
    # CSVs: each accepted one scores as the clean one (a repeated row is one more query and
    # gallery entry: scored against the clean embeddings repeated the same way).
    for name, (content, its_rows) in accepted_csvs(rows, rng).items():
        (tmp_path / 'q.csv').write_bytes(content)
        h5 = 'clean.h5'
        if len(its_rows) != len(rows):
            repeated = [rows.index(row) for row in its_rows]
            with h5py.File(tmp_path / 'repeated.h5', 'w') as f:
                f['emb'] = embs[repeated]
            h5 = 'repeated.h5'
            plain = tmp_path / 'repeated.csv'
            plain.write_text(csv_text(its_rows))
            want = evaluate(f'{name}, written plainly', 'repeated.csv', h5)
        else:
            want = clean
        got = evaluate(name, 'q.csv', h5)
        if got is not None:
            cases.same(name, got, want)
    for name, (content, culprit) in rejected_csvs(rows, rng).items():
        (tmp_path / 'bad.csv').write_bytes(content)
        evaluate(f'csv {name}', 'bad.csv', error=culprit if culprit != 'dataset' else 'bad.csv')
    evaluate('csv missing', 'none.csv', error='none.csv')
    (tmp_path / 'short.csv').write_text(csv_text(rows[:-1]))
    evaluate('fewer rows than embeddings', 'short.csv', error='short.csv')

    # HDF5 files.
    nan_row, inf_row = rng.integers(len(rows), size=2)
    with_nan, with_inf = embs.copy(), embs.copy()
    with_nan[nan_row, 0], with_inf[inf_row, -1] = np.nan, -np.inf
    datasets = {'wrong name': {'embeddings': embs}, 'empty file': {},
                'strings': {'emb': np.array([b'x'] * len(rows))},
                'booleans': {'emb': embs > 0}, 'complex': {'emb': embs.astype(np.complex64)},
                'records': {'emb': np.zeros(len(rows), [('a', 'f4'), ('b', 'f4')])},
                'one-dimensional': {'emb': embs[:, 0]}, 'three-dimensional': {'emb': embs[None]},
                'no columns': {'emb': np.zeros((len(rows), 0), np.float32)},
                'no rows': {'emb': np.zeros((0, 6), np.float32)},
                'scalar': {'emb': np.float32(1)}, 'NaN': {'emb': with_nan},
                'inf': {'emb': with_inf}}
    for name, content in datasets.items():
        with h5py.File(tmp_path / 'bad.h5', 'w') as f:
            for key, value in content.items():
                f[key] = value
        evaluate(f'h5 {name}', h5='bad.h5', error='bad.h5')
    with h5py.File(tmp_path / 'bad.h5', 'w') as f:
        f.create_group('emb')
    evaluate('h5 group named emb', h5='bad.h5', error='bad.h5')
    for name, content in {'zero bytes': b'', 'garbage': rng.bytes(3000),
                          'cut short': (tmp_path / 'clean.h5').read_bytes()[
                              :rng.integers(100, 2000)]}.items():
        (tmp_path / 'bad.h5').write_bytes(content)
        evaluate(f'h5 {name}', h5='bad.h5', error='bad.h5')
    # Accepted HDF5 files: the 2017 name, other number types (scored as float32 values).
    for name, values, key in (('2017 name embs', embs, 'embs'),
                              ('float64', embs.astype(np.float64), 'emb'),
                              ('float16', embs.astype(np.float16), 'emb'),
                              ('uint8', (embs * 20 + 100).astype(np.uint8), 'emb')):
        with h5py.File(tmp_path / 'other.h5', 'w') as f:
            f[key] = values
        with h5py.File(tmp_path / 'as_float.h5', 'w') as f:
            f['emb'] = values.astype(np.float64 if values.dtype == np.float64 else np.float32)
        got = evaluate(f'h5 {name}', h5='other.h5')
        if got is not None:
            cases.same(name, got, evaluate(f'h5 {name} as float', h5='as_float.h5'))
    # A failed run keeps the previous result file as it was.
    (tmp_path / 'kept.json').write_text('{"mAP": 1}')
    evaluate('output kept on error', h5='bad.h5', error='bad.h5', out='kept.json')
    # args.json beside the embeddings gives the report's image root.
    (tmp_path / 'exp').mkdir()
    shutil.copy(tmp_path / 'clean.h5', tmp_path / 'exp' / 'clean.h5')
    (tmp_path / 'exp' / 'args.json').write_bytes(b'{"image_root": "ima')
    evaluate('args.json cut short', h5='exp/clean.h5', error='args.json',
             extra=['--report', 'page', '--report_queries', '1'])
    cases.check(record_property)


# ----------------------------------------------------------------------------- embed.py
def test_embed(runner, data, tmp_path, record_property):
    folder, rows = data
    rng = np.random.default_rng([SEED, 2])
    cases = Cases(runner, 'embed.py', tmp_path)
    root = tmp_path / 'exp'
    shutil.copytree(folder / 'exp', root)

    def embed(name, csv, error=None, experiment=root, out='out.h5'):
        (experiment / out).unlink(missing_ok=True)
        argv = ['--experiment_root', experiment, '--dataset', csv, '--filename', out,
                '--image_root', folder, '--quiet', '--batch_size', '3']
        result = cases.run(name, argv, watch=experiment, error=error)
        if result is None or error is not None:
            return None
        with h5py.File(experiment / out, 'r') as f:
            return f['emb'][()]

    (tmp_path / 'clean.csv').write_text(csv_text(rows))
    clean = embed('clean', 'clean.csv')
    assert clean is not None, cases.problems
    assert np.abs(clean[0] - clean[1]).max() > 1e-3, 'every image gets the same embedding'
    # Two files combine the accepted features (each is scored on its own by test_evaluate).
    accepted = accepted_csvs(rows, rng)
    combined = {'bom, crlf, quotes, blank lines':
                (b'\xef\xbb\xbf' + accepted['blank lines'][0].replace(b'\n', b'\r\n')
                 .replace(b'\r\r\n', b'\r\n'), rows),
                'odd paths and a repeated row':
                (accepted['odd paths'][0] + accepted['odd paths'][0].splitlines(True)[1],
                 accepted['odd paths'][1] + [accepted['odd paths'][1][1]])}
    for name, (content, its_rows) in combined.items():
        (tmp_path / 'q.csv').write_bytes(content)
        got = embed(name, 'q.csv')
        if got is not None:
            plain = [(pid, fid.removeprefix(f'{ODD_FOLDER}/')) for pid, fid in its_rows]
            cases.same(name, got, clean[[rows.index(row) for row in plain]])
    for name, (content, culprit) in rejected_csvs(rows, rng).items():
        (tmp_path / 'bad.csv').write_bytes(content)
        embed(f'csv {name}', 'bad.csv', error=culprit if culprit != 'dataset' else 'bad.csv')
    (tmp_path / 'long.csv').write_text(csv_text(rows + [('0001', 'x' * 300 + '.jpg')]))
    embed('path too long for the file system', 'long.csv', error='long.csv')
    # Images that cannot be decoded, each named: three kinds of damage drawn by the seed (a run
    # costs a model; test_train runs all kinds through the same decoder).
    kinds = sorted(p.name for p in (folder / 'bad').iterdir())
    for name in rng.choice(kinds, 3, replace=False):
        (tmp_path / 'bad.csv').write_text(csv_text(rows[:3] + [('0009', f'bad/{name}')]))
        embed(f'image {name}', 'bad.csv', error=f'bad/{name}')
    # args.json.
    good = json.loads((folder / 'exp' / 'args.json').read_text())
    for name, (content, culprit) in bad_args_json(good, rng).items():
        (root / 'args.json').write_bytes(content)
        embed(f'args.json {name}', 'clean.csv', error=culprit)
    (root / 'args.json').write_text(json.dumps(good))
    # Checkpoints: cut files and a garbage state file, each in a fresh copy of the root.
    for name, damage in (('index cut short', lambda r: cut_file(r / 'checkpoint-2.index', rng)),
                         ('data cut short', lambda r: cut_file(
                             r / 'checkpoint-2.data-00000-of-00001', rng)),
                         ('data zero bytes', lambda r: (
                             r / 'checkpoint-2.data-00000-of-00001').write_bytes(b'')),
                         ('state file garbage', lambda r: (r / 'checkpoint').write_bytes(
                             rng.bytes(200)))):
        broken = tmp_path / 'broken'
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(folder / 'exp', broken)
        damage(broken)
        got = embed(f'checkpoint {name}', 'clean.csv', experiment=broken,
                    error=None if name == 'state file garbage' else 'checkpoint-2')
        if got is not None:  # the state file only names the latest: the last step is taken
            cases.same(name, got, clean)
    cases.check(record_property)


# ----------------------------------------------------------------------------- train.py
def test_train(runner, data, tmp_path, record_property):
    """Every bad input is refused before training starts; a run costs ~5 s, so the accepted CSVs
    are shown to give the same results through embed.py and evaluate.py, which read them with
    the same function, not by training twice."""
    folder, rows = data
    rng = np.random.default_rng([SEED, 3])
    cases = Cases(runner, 'train.py', tmp_path)
    tiny = ['--model_name', TINY_NET, '--head_name', TINY_HEAD, '--embedding_dim', TINY_DIM,
            '--net_input_height', '32', '--net_input_width', '16', '--batch_p', '2',
            '--batch_k', '2', '--train_iterations', '1', '--loading_threads', '2']

    def train(name, csv, error, extra=()):
        return cases.run(name, ['--experiment_root', tmp_path / 'new', '--train_set', csv,
                                '--image_root', folder, *tiny, *extra], error=error)

    for name, (content, culprit) in rejected_csvs(rows, rng).items():
        (tmp_path / 'bad.csv').write_bytes(content)
        train(f'csv {name}', 'bad.csv', culprit if culprit != 'dataset' else 'bad.csv')
    for name in sorted(p.name for p in (folder / 'bad').iterdir()):
        (tmp_path / 'bad.csv').write_text(csv_text(rows + [('0009', f'bad/{name}')]))
        train(f'image {name}', 'bad.csv', f'bad/{name}')
    (tmp_path / 'clean.csv').write_text(csv_text(rows))
    # A name holding a line break and what looks like an error line stays in one line.
    forged = 'ghost.jpg\ntrain.py: error: forged'
    (tmp_path / 'bad.csv').write_text(csv_text(rows) + f'0001,"{forged}"\n')
    train('missing image with a line break in its name', 'bad.csv', 'ghost.jpg\\ntrain.py')
    for name, content in (('zero bytes', b''), ('garbage', rng.bytes(5000))):
        (tmp_path / 'init.ckpt').write_bytes(content)
        train(f'--initial_checkpoint {name}', 'clean.csv', 'init.ckpt',
              ['--initial_checkpoint', 'init.ckpt'])
    # --resume reads args.json and the latest checkpoint.
    root = tmp_path / 'exp'
    shutil.copytree(folder / 'exp', root)
    good = json.loads((root / 'args.json').read_text())
    bad = bad_args_json(good, rng)
    bad['flag not a boolean'] = (json.dumps({**good, 'flip_augment': 'yes'}).encode(),
                                 'flip_augment')
    bad['unknown margin'] = (json.dumps({**good, 'margin': 'hard'}).encode(), 'margin')
    for name, (content, culprit) in bad.items():
        (root / 'args.json').write_bytes(content)
        cases.run(f'args.json {name}', ['--experiment_root', root, '--resume'], watch=root,
                  error=culprit)
    (root / 'args.json').write_text(json.dumps({**good, 'train_iterations': 3}))
    cut_file(root / 'checkpoint-2.data-00000-of-00001', rng)
    cases.run('checkpoint cut short', ['--experiment_root', root, '--resume'], watch=root,
              error='checkpoint-2', allowed=('train.log', 'train.lock'))
    cases.check(record_property)


# ----------------------------------------------------------------------------- export.py
def test_export(runner, data, tmp_path, record_property):
    """Bad inputs only: a complete export (SavedModel and ONNX) takes ~20 s; test_export.py
    makes them."""
    folder, rows = data
    rng = np.random.default_rng([SEED, 4])
    cases = Cases(runner, 'export.py', tmp_path)
    root = tmp_path / 'exp'
    shutil.copytree(folder / 'exp', root)
    good = json.loads((root / 'args.json').read_text())
    bad = bad_args_json(good, rng)
    for name in ('cut short', 'not UTF-8', 'string for a number', 'unknown net'):
        (root / 'args.json').write_bytes(bad[name][0])
        cases.run(f'args.json {name}', ['--experiment_root', root, '--output', 'out'],
                  error=bad[name][1])
    (root / 'args.json').write_text(json.dumps(good))
    cut_file(root / 'checkpoint-2.index', rng)
    cases.run('checkpoint index cut short', ['--experiment_root', root, '--output', 'out'],
              error='checkpoint-2')
    (tmp_path / 'file').write_text('x')
    cases.run('output is a file', ['--experiment_root', root, '--output', 'file'], error='file')
    cases.check(record_property)


# ----------------------------------------------------------------------------- trinet_embed.py
def trinet_arrays(rng: np.random.Generator) -> list[np.ndarray]:
    """Weights of the TriNet layout that keep activations finite: He-scaled kernels, identity
    batch norms."""
    arrays = []
    for name, shape in trinet_embed.param_layout():
        kind = name.split('.')[-1]
        if kind == 'W':
            fan_in = np.prod(shape[1:]) if len(shape) == 4 else shape[0]
            arrays.append(rng.standard_normal(shape, np.float32) * np.float32(
                np.sqrt(1 / fan_in)))
        else:
            arrays.append(np.ones(shape, np.float32) if kind in ('gamma', 'inv_std')
                          else np.zeros(shape, np.float32))
    return arrays


def test_trinet_embed(runner, data, tmp_path, record_property):
    folder, rows = data
    rng = np.random.default_rng([SEED, 5])
    cases = Cases(runner, 'trinet_embed.py', tmp_path)
    arrays = trinet_arrays(rng)
    np.savez(tmp_path / 'weights.npz', *arrays)
    paths = [str(folder / fid) for fid in FIDS[:3]]
    (tmp_path / 'list.txt').write_text(''.join(f'{p}\n' for p in paths))

    def trinet(name, image_list, weights='weights.npz', error=None):
        (tmp_path / 'out.h5').unlink(missing_ok=True)
        result = cases.run(name, [image_list, weights, '--h5', 'out.h5'], error=error)
        if result is None or error is not None:
            return None
        # The 2017 format `path,v1,...,v128`: a path may hold commas, the numbers never do.
        lines = [line.rsplit(',', trinet_embed.EMB_DIM) for line in result['stdout'].splitlines()]
        with h5py.File(tmp_path / 'out.h5', 'r') as f:
            cases.same(f'{name}: h5 and printed lines', f['emb'][()],
                       np.array([[float(v) for v in line[1:]] for line in lines], np.float32))
        return [line[0] for line in lines], np.array([line[1:] for line in lines], float)

    clean_paths, clean = trinet('clean', 'list.txt')
    assert np.abs(clean[0] - clean[1]).max() > 1e-3 * np.abs(clean).max(), 'all alike'
    odd = str(folder / ODD_FOLDER / FIDS[0])
    messy = '\ufeff' + f'{odd}\r\n\r\n{paths[1]}\r\n  \r\n{paths[2]}'
    (tmp_path / 'messy.txt').write_bytes(messy.encode())
    got = trinet('bom, crlf, blank lines, odd path', 'messy.txt')
    if got is not None:
        cases.same('messy list paths', got[0], [odd, *paths[1:]])
        cases.same('messy list embeddings', got[1], clean)
    # Image lists.
    lists = {'zero bytes': (b'', 'no paths'),
             'not UTF-8': (f'{paths[0]}\n{paths[1]}\xff\n'.encode('latin-1'), ':2:'),
             'missing image': (f'{paths[0]}\n{folder}/none.jpg\n'.encode(), 'none.jpg'),
             'NUL in a path': (f'{paths[0]}\n{paths[1]}\0\n'.encode(), 'line 2')}
    for name in ('zero.jpg', 'garbage.jpg', 'zero.png', 'garbage.png'):
        lists[f'image {name}'] = (f'{paths[0]}\n{folder}/bad/{name}\n'.encode(), f'bad/{name}')
    for name, (content, culprit) in lists.items():
        (tmp_path / 'bad.txt').write_bytes(content)
        trinet(f'list {name}', 'bad.txt', error=culprit)
    # An image whose header is fine but whose pixels are cut: found when it is decoded.
    (tmp_path / 'bad.txt').write_text(f'{paths[0]}\n{folder}/bad/truncated.jpg\n')
    trinet('image truncated.jpg', 'bad.txt', error='bad/truncated.jpg')
    # npz files.
    at = int(rng.integers(1, len(arrays) - 1))
    wrong = np.zeros(arrays[at].shape[::-1] + (1,), np.float32)
    nan = arrays[at].copy()
    nan.flat[rng.integers(nan.size)] = np.nan
    npzs = {'missing array': (arrays[:at], f'arr_{at} is missing'),
            'wrong shape': (arrays[:at] + [wrong], f'arr_{at} has shape'),
            'strings': (arrays[:at] + [np.full(arrays[at].shape, 'x')], f'arr_{at}'),
            'NaN': (arrays[:at] + [nan], f'arr_{at}'),
            'pickled': (arrays[:at] + [np.array([{'evil': 1}] * 2, dtype=object)], f'arr_{at}')}
    for name, (content, culprit) in npzs.items():
        np.savez(tmp_path / 'bad.npz', *content)
        trinet(f'npz {name}', 'list.txt', 'bad.npz', error=culprit)
    shutil.copy(tmp_path / 'weights.npz', tmp_path / 'bad.npz')
    with zipfile.ZipFile(tmp_path / 'bad.npz', 'a') as f:
        f.writestr(f'arr_{len(arrays)}.npy', b'')
    trinet('npz extra array', 'list.txt', 'bad.npz', error=f'arr_{len(arrays)}')
    for name, content in (('zero bytes', b''), ('garbage', rng.bytes(3000)),
                          ('cut short', (tmp_path / 'weights.npz').read_bytes()[
                              :rng.integers(1000, 100_000)])):
        (tmp_path / 'bad.npz').write_bytes(content)
        trinet(f'npz {name}', 'list.txt', 'bad.npz', error='bad.npz')
    trinet('npz missing', 'list.txt', 'none.npz', error='none.npz')
    cases.check(record_property)


# ----------------------------------------------------------------------------- data/prepare.py
def test_prepare(runner, tmp_path, record_property):
    """prepare.py reads folder trees and list files (it never decodes an image)."""
    rng = np.random.default_rng([SEED, 6])
    cases = Cases(runner, 'data/prepare.py', tmp_path)
    # Any name a file system allows comes back from the CSV as it was (line breaks included).
    names = {'Ünï cøde': ['a b.jpg', 'c,d.png', 'e"f.jpg'], 'id,2': ['g\nh.jpg', 'ü 人.jpeg'],
             'plain': ["it's.jpg", ' x.jpg'[1:]]}
    for identity, files in names.items():
        for name in files:
            (tmp_path / 'tree' / identity).mkdir(parents=True, exist_ok=True)
            (tmp_path / 'tree' / identity / name).write_bytes(rng.bytes(10))
    if cases.run('folders with odd names', ['folders', 'tree', '--out', 'out']) is not None:
        want = sorted((identity, f'{identity}/{name}') for identity, files in names.items()
                      for name in files)
        got = common.load_dataset(tmp_path / 'out' / 'tree.csv')
        cases.same('odd names read back', list(zip(*got, strict=True)), [
            (pid, fid) for pid, fid in sorted(want, key=lambda row: row[1])])
    # MSMT17 lists: a byte-order mark and CRLF are accepted; bytes that are not UTF-8 are not.
    lists = {'list_train.txt': ('train', ['0001/0001_011_01_0303morning_0035_1.jpg 1',
                                          '0000/0000_000_01_0303morning_0008_0.jpg 0']),
             'list_val.txt': ('train', ['0000/0000_003_05_0303morning_0450_1.jpg 0']),
             'list_query.txt': ('test', ['0002/0002_017_12_0303noon_1120_0.jpg 2']),
             'list_gallery.txt': ('test', ['0002/0002_005_03_0114morning_0333_2.jpg 2'])}
    root = tmp_path / 'MSMT17'
    for list_name, (part, lines) in lists.items():
        for line in lines:
            (root / part / line.split()[0]).parent.mkdir(parents=True, exist_ok=True)
            (root / part / line.split()[0]).write_bytes(b'')
        (root / list_name).write_text(''.join(line + '\n' for line in lines))
    clean = cases.run('msmt17 clean lists', ['msmt17', root, '--out', 'clean'])
    for list_name, (_, lines) in lists.items():
        (root / list_name).write_bytes(b'\xef\xbb\xbf' + ''.join(
            line + '\r\n' for line in lines).encode())
    messy = cases.run('msmt17 lists with bom and crlf', ['msmt17', root, '--out', 'messy'])
    if clean and messy:
        for path in sorted((tmp_path / 'clean').iterdir()):
            cases.same(path.name, (tmp_path / 'messy' / path.name).read_bytes(),
                       path.read_bytes())
    broken = lists['list_query.txt'][1][0].encode()
    at = int(rng.integers(3, len(broken) - 3))
    (root / 'list_query.txt').write_bytes(b'\n' + broken[:at] + b'\xff' + broken[at:] + b'\n')
    cases.run('msmt17 list not UTF-8', ['msmt17', root, '--out', 'o'], error='list_query.txt:2:')
    # MARS: .mat files that are not .mat files.
    mars = tmp_path / 'MARS'
    for sub, name in (('bbox_train', '0001C1T0001F001.jpg'), ('bbox_test', '0002C1T0001F001.jpg')):
        (mars / sub / name[:4]).mkdir(parents=True)
        (mars / sub / name[:4] / name).write_bytes(b'')
    (mars / 'info').mkdir()
    (mars / 'info' / 'test_name.txt').write_text('0002C1T0001F001.jpg\n')
    for name, content in (('zero bytes', b''), ('garbage', rng.bytes(500)),
                          ('MATLAB header, garbage body', b'MATLAB 5.0 MAT-file'.ljust(116)
                           + bytes(8) + b'\x00\x01IM' + rng.bytes(200))):
        for mat in ('tracks_test_info.mat', 'query_IDX.mat'):
            (mars / 'info' / mat).write_bytes(content)
        cases.run(f'mars .mat {name}', ['mars', mars, '--out', 'o'], error='.mat')
    cases.check(record_property)


# ----------------------------------------------------------------------------- untrusted names
def test_names_cannot_forge_log_or_error_lines(tmp_path, capsys):
    name = 'a.jpg\n2026-01-01 00:00:00 ERROR forged\x1b[2J\u202e'
    log = common.setup_logging(tmp_path / 'run.log', quiet=True)
    log.info('reading %s', name)
    lines = (tmp_path / 'run.log').read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith(r'reading a.jpg\n2026-01-01 00:00:00 ERROR '
                                                 r'forged\x1b[2J\u202e')

    def main():
        raise common.InputError(f'cannot read {name}')
    with pytest.raises(SystemExit) as exit_code:
        common.run(main)
    err = capsys.readouterr().err
    assert exit_code.value.code == 2 and err.count('\n') == 1 and 'forged\\x1b' in err


def test_np_load_never_unpickles():
    """Every np.load of the project passes allow_pickle=False (a pickle can run any code);
    test_trinet_embed.py feeds trinet_embed.py a pickled npz."""
    import ast
    calls = []
    for path in sorted(ROOT.rglob('*.py')):
        if {'tests', '.venv'} & set(path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == 'load' and getattr(node.func.value, 'id', '') in (
                        'np', 'numpy')):
                safe = any(k.arg == 'allow_pickle' and getattr(k.value, 'value', None) is False
                           for k in node.keywords)
                calls.append((f'{path.relative_to(ROOT)}:{node.lineno}', safe))
    assert calls, 'no np.load found: the scan is broken'
    assert all(safe for _, safe in calls), [where for where, safe in calls if not safe]
