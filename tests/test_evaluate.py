"""evaluate.py: the batched evaluation equals the per-query loop, and the CLI fails cleanly."""
import json
import re
import subprocess
import sys
import zlib

import h5py
import numpy as np
import pytest
from conftest import (ROOT, SHARED_DATA, assert_refused_and_kept, file_size_limit,
                      run_read_only)

import common
import evaluate
from excluders import diagonal, duke, market1501


def market_names(rng, pids, cams=6, prefix='bounding_box_test/'):
    """Market-1501 style file names for the given identities, with random cameras."""
    return np.array([f'{prefix}{pid}_c{rng.integers(1, cams + 1)}s1_{i:06d}_00.jpg'
                     for i, pid in enumerate(pids)])


def toy_market(rng, identities=30, per_identity=6, queries=40):
    """A small Market-like split: junk (-1), distractors (0000) and real identities."""
    gallery_pids = np.r_[np.repeat([f'{i:04d}' for i in range(1, identities + 1)], per_identity),
                         ['-1'] * 10, ['0000'] * 15]
    gallery_fids = market_names(rng, gallery_pids)
    query_pids = rng.choice(gallery_pids[:identities * per_identity], queries)
    query_fids = market_names(rng, query_pids, prefix='query/')
    return query_pids, query_fids, gallery_pids, gallery_fids


def embeddings(rng, pids, kind, dim=8):
    """Embeddings of three kinds: random, clustered by identity, and integer (many ties)."""
    if kind == 'random':
        return rng.normal(size=(len(pids), dim)).astype(np.float32)
    centers = {pid: rng.normal(size=dim) for pid in np.unique(pids)}
    embs = np.array([centers[pid] for pid in pids]) + 0.8 * rng.normal(size=(len(pids), dim))
    return np.round(embs).astype(np.float32) if kind == 'integer' else embs.astype(np.float32)


def assert_same(fast, slow):
    aps_fast = np.array(fast['aps'], dtype=float)
    aps_slow = np.array(slow['aps'], dtype=float)
    np.testing.assert_array_equal(np.isnan(aps_fast), np.isnan(aps_slow))
    np.testing.assert_allclose(aps_fast, aps_slow, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast['CMC'], slow['CMC'], atol=1e-6, rtol=0)
    assert abs(fast['mAP'] - slow['mAP']) < 1e-6
    assert abs(fast['mINP'] - slow['mINP']) < 1e-6


@pytest.fixture(params=['sort', 'count'])
def ranking(request, monkeypatch):
    """score_row's two ways to rank the matches: sorting the near entries, or counting."""
    monkeypatch.setattr(evaluate, 'SORT_PER_MATCH', 10**9 if request.param == 'sort' else 0)


@pytest.mark.parametrize('market_ap', [False, True])
@pytest.mark.parametrize('metric', ['euclidean', 'sqeuclidean', 'cityblock'])
@pytest.mark.parametrize('kind', ['random', 'clustered', 'integer'])
def test_batched_equals_loop(kind, metric, market_ap, ranking):
    # crc32, not hash(): str hashes change per process (PYTHONHASHSEED).
    rng = np.random.default_rng(zlib.crc32(f'{kind} {metric} {market_ap}'.encode()))
    query_pids, query_fids, gallery_pids, gallery_fids = toy_market(rng)
    query_embs = embeddings(rng, query_pids, kind)
    gallery_embs = embeddings(rng, gallery_pids, kind)
    excluder = market1501.Excluder(gallery_fids)
    data = (query_pids, query_fids, query_embs, gallery_pids, gallery_fids, gallery_embs, excluder)
    slow = evaluate.evaluate_loop(*data, metric=metric, market_ap=market_ap)
    for batch_size in (1, 7, 1000):
        fast = evaluate.evaluate(*data, metric=metric, market_ap=market_ap, batch_size=batch_size)
        assert_same(fast, slow)


@pytest.mark.parametrize('market_ap', [False, True])
def test_duplicated_embeddings_tie_in_gallery_order(market_ap, ranking):
    """Identical gallery embeddings tie exactly; both versions must break ties the same way."""
    rng = np.random.default_rng(3)
    query_pids, query_fids, gallery_pids, gallery_fids = toy_market(rng)
    gallery_embs = np.repeat(rng.normal(size=(len(gallery_pids) // 5 + 1, 4)), 5, axis=0)
    gallery_embs = gallery_embs[:len(gallery_pids)]
    query_embs = gallery_embs[rng.integers(0, len(gallery_pids), len(query_pids))]
    excluder = market1501.Excluder(gallery_fids)
    data = (query_pids, query_fids, query_embs, gallery_pids, gallery_fids, gallery_embs, excluder)
    assert_same(evaluate.evaluate(*data, market_ap=market_ap, batch_size=16),
                evaluate.evaluate_loop(*data, market_ap=market_ap))


def test_ap_definitions_on_a_hand_made_ranking():
    """One query; gallery ranked miss, hit, miss, hit: the two AP definitions differ."""
    query_embs = np.zeros((1, 1), np.float32)
    gallery_embs = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    gallery_pids = np.array(['b', 'a', 'c', 'a'])
    gallery_fids = np.array(['g0', 'g1', 'g2', 'g3'])
    args = (np.array(['a']), np.array(['q.jpg']), query_embs, gallery_pids, gallery_fids,
            gallery_embs, diagonal.Excluder(gallery_fids))
    # scikit-learn: mean of the precisions at the hits, 1/2 and 2/4.
    assert evaluate.evaluate(*args)['aps'][0] == pytest.approx(0.5)
    # MATLAB trapezoids: ((0/1 + 1/2) / 2 + (1/3 + 2/4) / 2) / 2.
    assert evaluate.evaluate(*args, market_ap=True)['aps'][0] == pytest.approx((0.25 + 5 / 12) / 2)
    result = evaluate.evaluate(*args)
    assert result['CMC'] == [0.0, 1.0, 1.0, 1.0]  # first hit at rank 2
    assert result['mINP'] == pytest.approx(2 / 4)  # two hits, the last at rank 4


def test_queries_without_match_are_left_out():
    rng = np.random.default_rng(4)
    gallery_pids = np.array(['0001', '0001', '0002', '0002'])
    gallery_fids = np.array(['0001_c1s1_000001_00.jpg', '0001_c2s1_000002_00.jpg',
                             '0002_c1s1_000003_00.jpg', '0002_c2s1_000004_00.jpg'])
    query_pids = np.array(['0001', '0003'])  # 0003 is nowhere in the gallery
    query_fids = np.array(['0001_c3s1_000005_00.jpg', '0003_c1s1_000006_00.jpg'])
    result = evaluate.evaluate(query_pids, query_fids, rng.normal(size=(2, 4)), gallery_pids,
                               gallery_fids, rng.normal(size=(4, 4)),
                               market1501.Excluder(gallery_fids))
    assert result['aps'][1] is None and result['aps'][0] is not None
    assert result['mAP'] == pytest.approx(result['aps'][0])
    assert result['CMC'][-1] == pytest.approx(1.0)  # the CMC counts only the matched query


def test_no_queries_give_an_empty_result():
    gallery_fids = np.array(['0001_c1s1_000001_00.jpg', '0002_c2s1_000002_00.jpg'])
    result = evaluate.evaluate(np.array([], str), np.array([], str), np.zeros((0, 4)),
                               np.array(['0001', '0002']), gallery_fids, np.ones((2, 4)),
                               market1501.Excluder(gallery_fids))
    assert result['aps'] == [] and result['mAP'] == 0.0 and result['CMC'] == [0.0, 0.0]


@pytest.mark.parametrize('name, module', [('market1501', market1501), ('dukeMTMC', duke)])
def test_real_split_lists(name, module):
    """The official query/test lists, with embeddings of our own making, fast == loop."""
    if not (SHARED_DATA / f'{name}_query.csv').exists():
        pytest.skip(f'the official split lists are not in {SHARED_DATA}')
    rng = np.random.default_rng(5)
    query_pids, query_fids = common.load_dataset(SHARED_DATA / f'{name}_query.csv')
    gallery_pids, gallery_fids = common.load_dataset(SHARED_DATA / f'{name}_test.csv')
    picked = rng.choice(len(query_pids), 60, replace=False)  # the loop is slow: a sample
    query_pids, query_fids = query_pids[picked], query_fids[picked]
    query_embs = embeddings(rng, query_pids, 'clustered', dim=16)
    gallery_embs = embeddings(rng, gallery_pids, 'clustered', dim=16)
    excluder = module.Excluder(gallery_fids)
    data = (query_pids, query_fids, query_embs, gallery_pids, gallery_fids, gallery_embs, excluder)
    for market_ap in (False, True):
        assert_same(evaluate.evaluate(*data, market_ap=market_ap, batch_size=25),
                    evaluate.evaluate_loop(*data, market_ap=market_ap))


def test_summary_line_format():
    line = evaluate.summary_line({'mAP': 0.6914, 'CMC': list(np.linspace(0.8492, 1, 12))})
    assert re.fullmatch(r'mAP: 69\.14% \| top-1: 84\.92% top-2: \d+\.\d\d% \| top-5: \d+\.\d\d% '
                        r'\| top-10: \d+\.\d\d%', line)


# ----------------------------------------------------------------------------- the CLI
def write_split(tmp_path, rng, kind='clustered'):
    query_pids, query_fids, gallery_pids, gallery_fids = toy_market(rng)
    paths = {}
    for name, pids, fids in (('query', query_pids, query_fids),
                             ('gallery', gallery_pids, gallery_fids)):
        paths[name + '_dataset'] = tmp_path / f'{name}.csv'
        lines = (f'{p},{f}\n' for p, f in zip(pids, fids, strict=True))
        paths[name + '_dataset'].write_text(''.join(lines))
        paths[name + '_embeddings'] = tmp_path / f'{name}.h5'
        common.save_embeddings(paths[name + '_embeddings'], embeddings(rng, pids, kind))
    return paths


def run_cli(paths, *extra):
    args = [f'--{key}={value}' for key, value in paths.items()]
    return subprocess.run([sys.executable, str(ROOT / 'evaluate.py'), '--excluder=market1501',
                           *args, *extra], capture_output=True, text=True, timeout=120)


def test_cli_prints_summary_and_writes_json(tmp_path):
    paths = write_split(tmp_path, np.random.default_rng(6))
    out = tmp_path / 'result.json'
    done = run_cli(paths, f'--filename={out}', '--use_market_ap')
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r'mAP: \d+\.\d\d% \| top-1: .*top-10: \d+\.\d\d%\n', done.stdout)
    result = json.loads(out.read_text())
    assert set(result) >= {'mAP', 'CMC', 'aps', 'mINP', 'args'}
    assert result['args']['use_market_ap'] is True
    assert len(result['aps']) == 40 and len(result['CMC']) == 205
    assert f"mAP: {result['mAP']:.2%}" in done.stdout


@pytest.mark.parametrize('failure', ['disk full', 'read-only folder'])
def test_failed_json_write_keeps_the_previous_file(failure, tmp_path):
    paths = write_split(tmp_path, np.random.default_rng(6))
    out = tmp_path / 'out'
    out.mkdir()
    previous = out / 'result.json'
    previous.write_text('{"mAP": 0.5}')
    command = [sys.executable, ROOT / 'evaluate.py', '--excluder=market1501',
               *(f'--{key}={value}' for key, value in paths.items()), f'--filename={previous}']
    if failure == 'disk full':  # the result (2 kB of aps and CMC) does not fit in 512 bytes
        result = subprocess.run(list(map(str, command)), capture_output=True, text=True,
                                timeout=120, preexec_fn=file_size_limit(512))
    else:
        result = run_read_only(out, command, capture_output=True, text=True, timeout=120)
    why = 'File too large' if failure == 'disk full' else 'Read-only file system'
    assert_refused_and_kept(result, 'evaluate.py', previous, b'{"mAP": 0.5}', why)
    assert json.loads(previous.read_text()) == {'mAP': 0.5}


def test_cli_does_not_import_tensorflow(tmp_path):
    """evaluate.py is NumPy only, so it starts without TensorFlow's multi-second import."""
    paths = write_split(tmp_path, np.random.default_rng(7))
    args = [f'--{key}={value}' for key, value in paths.items()]
    code = ('import runpy, sys\n'
            'sys.argv = ["evaluate.py", *sys.argv[1:]]\n'
            'try:\n    runpy.run_path("evaluate.py", run_name="__main__")\n'
            'except SystemExit as e:\n    assert not e.code, e.code\n'
            'assert "tensorflow" not in sys.modules, "tensorflow was imported"\n'
            'print("no tensorflow")')
    done = subprocess.run([sys.executable, '-c', code, '--excluder=market1501', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and 'no tensorflow' in done.stdout, done.stderr


def test_import_does_not_import_tensorflow():
    """Nor does importing it: the plug-in listing it uses (model.plugin_names) stays light."""
    code = 'import evaluate, sys; assert "tensorflow" not in sys.modules'
    done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_cli_warns_about_queries_without_match(tmp_path):
    paths = write_split(tmp_path, np.random.default_rng(8))
    with open(paths['query_dataset'], 'a') as f:
        f.write('9999,query/9999_c1s1_000001_00.jpg\n')
    with h5py.File(paths['query_embeddings'], 'r') as f:
        embs = f['emb'][()]
    common.save_embeddings(paths['query_embeddings'], np.r_[embs, embs[:1]])
    done = run_cli(paths)
    assert done.returncode == 0, done.stderr
    assert re.search(r'warning: 1 of 41 queries have no valid match.*9999_c1s1_000001_00\.jpg',
                     done.stderr)


def break_csv_row_count(paths):
    with open(paths['gallery_dataset'], 'a') as f:
        f.write('0001,bounding_box_test/0001_c1s1_999999_00.jpg\n')
    return 'rows but the gallery embeddings have'


def break_csv_line(paths):
    lines = paths['query_dataset'].read_text().splitlines()
    lines[4] = 'just-one-field'
    paths['query_dataset'].write_text('\n'.join(lines) + '\n')
    return 'query.csv:5: expected'


def break_dimension(paths):
    common.save_embeddings(paths['gallery_embeddings'], np.zeros((205, 3)))
    return '8-D but gallery embeddings are 3-D'


def break_nan(paths):
    embs = np.ones((40, 8), np.float32)
    embs[3, 2] = np.nan
    common.save_embeddings(paths['query_embeddings'], embs)
    return 'NaN or inf, the first is row 3'


def break_missing_h5(paths):
    paths['gallery_embeddings'].unlink()
    return 'cannot read embeddings'


def break_missing_csv(paths):
    paths['query_dataset'].unlink()
    return 'query.csv does not exist'


def break_h5_content(paths):
    with h5py.File(paths['query_embeddings'], 'w') as f:
        f['something'] = np.zeros(3)
    return 'neither an "emb" nor an "embs" dataset'


def break_unparsable_name(paths):
    with open(paths['query_dataset']) as f:
        lines = f.read().splitlines()
    lines[0] = '0001,query/holiday.jpg'
    paths['query_dataset'].write_text('\n'.join(lines) + '\n')
    return 'holiday.jpg: not a Market-1501 file name'


@pytest.mark.parametrize('breaker', [break_csv_row_count, break_csv_line, break_dimension,
                                     break_nan, break_missing_h5, break_missing_csv,
                                     break_h5_content, break_unparsable_name])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, breaker):
    paths = write_split(tmp_path, np.random.default_rng(9))
    expected = breaker(paths)
    done = run_cli(paths)
    assert done.returncode == 2, done.stderr
    assert 'Traceback' not in done.stderr
    assert done.stderr.count('\n') == 1 and done.stderr.startswith('evaluate.py: error: ')
    assert expected in done.stderr


# ----------------------------------------------------------------------------- beyond 2017
def test_aqe_equals_direct_expansion():
    """--aqe K: each query is the mean of itself and its K nearest kept gallery entries."""
    rng = np.random.default_rng(10)
    query_pids, query_fids, gallery_pids, gallery_fids = toy_market(rng)
    query_embs = embeddings(rng, query_pids, 'random')
    gallery_embs = embeddings(rng, gallery_pids, 'random')
    excluder = market1501.Excluder(gallery_fids)
    for alpha in (None, 2.0):
        neighbours = evaluate.nearest_kept(query_fids, query_embs, gallery_embs, excluder,
                                           'euclidean', 4, batch_size=7)
        got = evaluate.rerank.expand_queries(query_embs, gallery_embs, neighbours, alpha)
        ignored = excluder(query_fids)
        for q in range(len(query_fids)):
            dists = np.linalg.norm(gallery_embs.astype(float) - query_embs[q], axis=1)
            dists[ignored[q]] = np.inf
            found = gallery_embs[np.argsort(dists, kind='stable')[:4]].astype(float)
            cos = found @ query_embs[q] / np.linalg.norm(found, axis=1) / np.linalg.norm(
                query_embs[q])
            weights = np.ones(4) if alpha is None else np.maximum(cos, 0) ** alpha
            want = (query_embs[q] + weights @ found) / (1 + weights.sum())
            np.testing.assert_allclose(got[q], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('pooling', ['mean', 'max'])
def test_multi_query_pools_identity_and_camera(pooling):
    query_fids = np.array(['query/0001_c1s1_000101_00.jpg', 'query/0002_c3s1_000102_00.jpg',
                           'query/0003_c2s1_000103_00.jpg'])
    pool_fids = np.array(['gt_bbox/0001_c1s1_000101_00.jpg', 'gt_bbox/0001_c1s2_000301_00.jpg',
                          'gt_bbox/0001_c2s1_000401_00.jpg', 'gt_bbox/0002_c3s1_000102_00.jpg'])
    rng = np.random.default_rng(11)
    query_embs, pool_embs = rng.normal(size=(3, 4)), rng.normal(size=(4, 4))
    excluder = market1501.Excluder(pool_fids)
    pooled, alone = evaluate.pool_queries(query_fids, query_embs, pool_fids, pool_embs, excluder,
                                          pooling)
    reduce = np.mean if pooling == 'mean' else np.max
    np.testing.assert_allclose(pooled[0], reduce(pool_embs[:2], axis=0))  # camera 1 only
    np.testing.assert_allclose(pooled[1], pool_embs[3])
    np.testing.assert_allclose(pooled[2], query_embs[2])  # no box of 0003 in camera 2: itself
    assert alone == 1
    with pytest.raises(common.InputError, match='--excluder whose file names have cameras'):
        evaluate.pool_queries(query_fids, query_embs, pool_fids, pool_embs,
                              diagonal.Excluder(pool_fids), pooling)


def test_cli_rerank_aqe_multi_query_recorded(tmp_path):
    rng = np.random.default_rng(12)
    paths = write_split(tmp_path, rng)
    out = tmp_path / 'result.json'
    extra = ['--rerank', '--k1=8', '--k2=3', '--aqe=2', '--aqe_alpha=3', '--multi_query=max',
             f'--multi_query_dataset={paths["query_dataset"]}',
             f'--multi_query_embeddings={paths["query_embeddings"]}', f'--filename={out}']
    done = run_cli(paths, *extra)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(
        '| multi-query max | AQE K=2 alpha=3 | re-ranking k1=8 k2=3 lambda=0.3')
    result = json.loads(out.read_text())
    assert result['rerank'] == {'k1': 8, 'k2': 3, 'lambda_value': 0.3}
    assert result['aqe'] == {'k': 2, 'alpha': 3.0}
    assert result['multi_query']['pooling'] == 'max'
    plain = run_cli(paths, f'--filename={out}')
    assert json.loads(out.read_text())['rerank'] is None and '|' in plain.stdout


@pytest.mark.parametrize('extra, expected', [
    (['--multi_query=mean'], '--multi_query mean needs both --multi_query_dataset'),
    (['--multi_query_dataset=x.csv'], 'need --multi_query mean or max'),
    (['--rerank', '--k1=4', '--k2=6'], '--k2 6 is larger than --k1 4'),
    (['--k1=4'], '--k1 only apply with --rerank'),
    (['--rerank', '--lambda_value=1.5'], '--lambda_value 1.5 is not in [0, 1]'),
    (['--aqe_alpha=3'], '--aqe_alpha only applies with --aqe K'),
    (['--aqe=1000'], '--aqe 1000 is more than the 205 gallery images'),
    (['--rerank', '--k1=300'], '--k1 300 needs more than 300 images')])
def test_cli_bad_combinations_are_one_line(tmp_path, extra, expected):
    paths = write_split(tmp_path, np.random.default_rng(13))
    done = run_cli(paths, *extra)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count('\n') == 1 and expected in done.stderr, done.stderr


@pytest.mark.parametrize('market_ap', [False, True])
def test_cosine_batched_equals_loop_and_ranks_as_euclidean_on_the_sphere(market_ap):
    rng = np.random.default_rng(11)
    query_pids, query_fids, gallery_pids, gallery_fids = toy_market(rng)
    centres = {pid: rng.normal(size=8) for pid in np.unique(gallery_pids)}
    query_embs, gallery_embs = (np.array([centres[pid] for pid in pids]) + 0.5 * rng.normal(
        size=(len(pids), 8)) for pids in (query_pids, gallery_pids))
    query_embs *= rng.uniform(0.5, 3, (40, 1))  # norms that cosine ignores
    excluder = market1501.Excluder(gallery_fids)
    data = (query_pids, query_fids, query_embs, gallery_pids, gallery_fids, gallery_embs, excluder)
    cosine = evaluate.evaluate(*data, metric='cosine', market_ap=market_ap, batch_size=7)
    assert_same(cosine, evaluate.evaluate_loop(*data, metric='cosine', market_ap=market_ap))
    # On unit vectors |a - b|^2 = 2 cos_dist(a, b): the same ranking, so the same AP and CMC,
    # whatever the norms of the embeddings were.
    def unit(embs):
        return embs / np.linalg.norm(embs, axis=1, keepdims=True)
    euclidean = evaluate.evaluate(*data[:2], unit(query_embs), *data[3:5], unit(gallery_embs),
                                  excluder, metric='euclidean', market_ap=market_ap)
    assert 0.3 < cosine['mAP'] < 0.99
    assert_same(cosine, euclidean)
