"""search.py and gallery.py: exact search ranks as evaluate.py does, the index folder, additions,
calibration, faiss recall, and embed.py --shard parts joined as one unsharded run.

The HTTP service has its own file (test_service.py): it needs an export and a server process.
"""
import json
import sys
import threading

import numpy as np
import pytest

import common
import evaluate
import gallery
import loss
import nearest
import search
from excluders.diagonal import Excluder


def write_set(folder, name: str, embs: np.ndarray, pids, prefix: str = 'img'):
    """`name.h5` and `name.csv` (identity,path) in `folder`; returns their paths."""
    h5, csv = folder / f'{name}.h5', folder / f'{name}.csv'
    common.save_embeddings(h5, embs)
    csv.write_text(''.join(f'{pid},{prefix}/{i:04d}.jpg\n' for i, pid in enumerate(pids)))
    return h5, csv


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """search.py ARGV in this process, as common.run runs it: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        common.run(lambda: search.main([str(a) for a in argv]))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def clustered(rng, count: int, dim: int, identities: int, spread: float = 0.3):
    """Embeddings around one centre per identity, and their identities."""
    centres = rng.normal(size=(identities, dim))
    pids = rng.integers(0, identities, count)
    return (centres[pids] + spread * rng.normal(size=(count, dim))).astype(np.float32), pids


# ----------------------------------------------------------------------------- exact search
@pytest.mark.parametrize('metric', loss.METRICS)
@pytest.mark.parametrize('block', [None, 7])
@pytest.mark.parametrize('kind', ['float', 'integer'])
def test_exact_search_equals_evaluate_ranking(metric, block, kind):
    rng = np.random.default_rng(0)
    if kind == 'integer':  # many exact ties: they must come in gallery order
        gallery_embs = rng.integers(-2, 3, (400, 6)).astype(np.float32)
        queries = rng.integers(-2, 3, (30, 6)).astype(np.float32)
    else:
        gallery_embs, _ = clustered(rng, 400, 6, 20)
        gallery_embs[50] = gallery_embs[3]  # a duplicate: a tie
        queries = np.r_[clustered(rng, 29, 6, 20)[0], gallery_embs[3:4]]
    index = gallery.Gallery.__new__(gallery.Gallery)  # the search alone, no folder
    index.metric, index.exact = metric, nearest.Exact(gallery_embs, metric, block)
    index.searcher = index.exact
    found = index.search(queries, 10)
    dists = evaluate.plain_distances(queries, gallery_embs, metric)(slice(None))
    for row, hits in enumerate(found):
        want = np.argsort(dists[row], kind='stable')[:10]
        if metric == 'cosine':
            # Normalising rows turns exact ties (parallel integer rows) into last-bit
            # differences that a matrix product and a row-wise sum round apart: entries may
            # swap only where evaluate.py's own distances agree to rounding.
            np.testing.assert_allclose(dists[row, [i for i, _ in hits]], dists[row, want],
                                       rtol=0, atol=1e-12)
        else:
            assert [i for i, _ in hits] == want.tolist()
        # evaluate.py's matrix product rounds in another order: equal to the last bits
        # (absolutely for cosine, 1 - a dot product: 0 comes out as -2e-16 there).
        np.testing.assert_allclose([d for _, d in hits], dists[row, want], rtol=1e-12,
                                   atol=1e-15)


def test_cli_results_rank_as_evaluate(tmp_path, capsys):
    """index + query --out through the command line: the lists and evaluate.py's CMC agree."""
    rng = np.random.default_rng(1)
    gallery_embs, gallery_pids = clustered(rng, 300, 8, 30)
    query_embs, query_pids = clustered(rng, 40, 8, 30, spread=0.6)
    g_h5, g_csv = write_set(tmp_path, 'gallery', gallery_embs, gallery_pids)
    q_h5, q_csv = write_set(tmp_path, 'query', query_embs, query_pids, 'q')
    code, out, err = run(['index', '--embeddings', g_h5, '--dataset', g_csv,
                          '--out', tmp_path / 'idx'], capsys)
    assert code == 0, err
    assert 'indexed 300 8-D embeddings (euclidean, exact)' in out
    code, out, err = run(['query', '--index', tmp_path / 'idx', '--query_embeddings', q_h5,
                          '--dataset', q_csv, '--top_k', '300', '--out',
                          tmp_path / 'r.jsonl', '--quiet'], capsys)
    assert code == 0 and out == '', err
    records = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
    assert [r['query'] for r in records] == [f'q/{i:04d}.jpg' for i in range(40)]
    first_ranks = []
    for record, pid in zip(records, query_pids, strict=True):
        ids = [int(e['identity']) for e in record['results']]
        distances = [e['distance'] for e in record['results']]
        assert distances == sorted(distances) and len(ids) == 300
        first_ranks.append(ids.index(pid) if pid in ids else None)
    fids = np.array([f'img/{i:04d}.jpg' for i in range(300)])
    result = evaluate.evaluate(query_pids.astype(str), np.array([r['query'] for r in records]),
                               query_embs, gallery_pids.astype(str), fids, gallery_embs,
                               Excluder(fids))
    cmc = np.cumsum(np.bincount([r for r in first_ranks if r is not None], minlength=300))
    np.testing.assert_allclose(cmc / sum(r is not None for r in first_ranks), result['CMC'])


# ----------------------------------------------------------------------------- the folder
def test_settings_from_args_json_and_add(tmp_path, capsys):
    rng = np.random.default_rng(2)
    (tmp_path / 'args.json').write_text(json.dumps({
        'metric': 'sqeuclidean', 'model_name': 'small_cnn', 'head_name': 'fc1024_normalize',
        'embedding_dim': 4, 'net_input_height': 64, 'net_input_width': 32,
        'image_root': '/data/images'}))
    embs, pids = clustered(rng, 50, 4, 5)
    h5, csv = write_set(tmp_path, 'g', embs, pids)
    folder = tmp_path / 'idx'
    assert run(['index', '--embeddings', h5, '--dataset', csv, '--out', folder], capsys)[0] == 0
    info = json.loads((folder / 'index.json').read_text())
    assert (info['metric'], info['model_name'], info['net_input_size'], info['normalised'],
            info['image_root']) == ('sqeuclidean', 'small_cnn', [64, 32], True, '/data/images')
    assert info['settings_from'] == str(tmp_path / 'args.json')
    # --add: a new file in additions/, the base untouched; found after a reload.
    base = (folder / 'embeddings.npy').read_bytes()
    new = rng.normal(size=(3, 4)).astype(np.float32)
    h5_new, csv_new = write_set(tmp_path, 'new', new, ['x', 'y', 'z'], 'new')
    code, out, err = run(['index', '--add', '--embeddings', h5_new, '--dataset', csv_new,
                          '--out', folder], capsys)
    assert code == 0 and 'added 3 entries' in out and '53 in all' in out, err
    assert (folder / 'embeddings.npy').read_bytes() == base
    assert [p.name for p in (folder / 'additions').iterdir()] == ['00000000.npz']
    index = gallery.Gallery(folder)
    assert len(index) == 53 and index.pids[50:] == ['x', 'y', 'z']
    hits = index.search(new, 1)
    assert [h[0][0] for h in hits] == [50, 51, 52] and max(h[0][1] for h in hits) == 0
    # A wrong size is refused in one line; --metric that differs from args.json warns.
    h5_bad, csv_bad = write_set(tmp_path, 'bad', new[:, :3], ['x', 'y', 'z'])
    code, _, err = run(['index', '--add', '--embeddings', h5_bad, '--dataset', csv_bad,
                        '--out', folder], capsys)
    assert code == 2 and 'shape (3, 3)' in err and len(err.strip().splitlines()) == 1
    code, _, err = run(['index', '--embeddings', h5, '--dataset', csv, '--out', folder,
                        '--overwrite', '--metric', 'cityblock'], capsys)
    assert code == 0 and 'trained with sqeuclidean' in err
    assert json.loads((folder / 'index.json').read_text())['metric'] == 'cityblock'
    assert not (folder / 'additions' / '00000000.npz').exists()  # replaced as a whole


def test_concurrent_additions_never_share_a_file(tmp_path):
    folder = tmp_path / 'additions'
    embs = np.zeros((1, 2), np.float32)
    threads = [threading.Thread(target=gallery.write_addition,
                                args=(folder, embs + i, [str(i)], [f'{i}.jpg']))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f'{i:08d}.npz' for i in range(8)]
    assert sorted(gallery.read_addition(f, 2)[1][0] for f in files) == [str(i) for i in range(8)]


def test_max_distance_no_match_and_calibrate(tmp_path, capsys):
    rng = np.random.default_rng(3)
    embs, pids = clustered(rng, 200, 8, 20, spread=0.2)
    h5, csv = write_set(tmp_path, 'g', embs, pids)
    code, out, err = run(['calibrate', '--embeddings', h5, '--dataset', csv,
                          '--false_match_rate', '0.02'], capsys)
    assert code == 0, err
    line = next(line for line in out.splitlines() if 'suggested' in line)
    distance = float(line.split('--max_distance ')[1].split()[0])
    same, different = search.calibrate(embs, pids, 'euclidean')
    assert np.mean(different <= distance) <= 0.02 < np.mean(different <= distance * 1.01)
    assert f'{np.mean(same <= distance):7.2%}' in line
    assert len(same) == sum(c * (c - 1) for c in np.bincount(pids))
    code, out, err = run(['calibrate', '--embeddings', h5, '--dataset', csv,
                          '--ignore_identities', str(pids[0]), str(pids[1])], capsys)
    kept = np.bincount(pids[~np.isin(pids, pids[:2])])
    assert code == 0 and out.startswith(f'{sum(c * (c - 1) for c in kept)} same-identity'), err
    # Queries: one near the gallery, one far from everything.
    run(['index', '--embeddings', h5, '--dataset', csv, '--out', tmp_path / 'idx'], capsys)
    queries = np.r_[embs[:1] + 0.01, np.full((1, 8), 50, np.float32)]
    q_h5, q_csv = write_set(tmp_path, 'q', queries, ['a', 'b'], 'q')
    code, out, err = run(['query', '--index', tmp_path / 'idx', '--query_embeddings', q_h5,
                          '--dataset', q_csv, '--top_k', '2', '--max_distance', distance,
                          '--out', tmp_path / 'r.jsonl'], capsys)
    assert code == 0, err
    assert out.count(f'no match within {distance:g}') == 1
    first, second = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
    assert first['match'] and not second['match']
    assert first['results'][0]['beyond_max_distance'] is False
    assert all(e['beyond_max_distance'] for e in second['results'])


@pytest.mark.parametrize('argv, expected', [
    (['query', '--index', 'nowhere', '--query_embeddings', 'q.h5'], 'nowhere is not a gallery'),
    (['query', '--index', 'idx', '--images', 'a.jpg'], 'give --export EXPORT'),
    (['query', '--index', 'idx', '--export', 'e', '--images', 'a.jpg', '--dataset', 'q.csv'],
     'either --images or --dataset'),
    (['index', '--embeddings', 'g.h5', 'missing.h5', '--dataset', 'g.csv', '--out', 'x'],
     'g.h5 is not a part of embed.py --shard'),
    (['index', '--embeddings', 'g.h5', '--dataset', 'g.csv', '--out', 'idx'],
     'idx exists and is not empty'),
    (['index', '--embeddings', 'g.h5', '--dataset', 'g.csv', '--out', 'new', '--index', 'faiss',
      '--metric', 'cityblock'], 'metric cityblock needs --index exact'),
])
def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    embs = np.zeros((3, 2), np.float32)
    write_set(tmp_path, 'g', embs, ['a', 'b', 'c'])
    gallery.write_index('idx', embs, ['a', 'b', 'c'], ['1', '2', '3'], {'metric': 'euclidean'})
    code, _, err = run(argv, capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- faiss
@pytest.mark.parametrize('hnsw_max', [10_000, 100])
def test_faiss_recall_on_a_small_gallery(hnsw_max):
    """HNSW (small galleries) and IVF (beyond hnsw_max): recall@10 against exact >= 0.99 on
    queries that are not in the gallery."""
    pytest.importorskip('faiss', reason='faiss-cpu is not installed (requirements-search.txt)')
    rng = np.random.default_rng(4)
    both, _ = clustered(rng, 4200, 16, 100)
    embs, queries = both[:4000], both[4000:]
    searcher = nearest.build_faiss(embs, 'euclidean', hnsw_max=hnsw_max)
    assert searcher.params['type'] == ('HNSW' if hnsw_max > 4000 else 'IVFFlat')
    exact = nearest.Exact(embs, 'euclidean')
    recall = []
    for query, approx, rows in zip(queries, searcher.candidates(queries, 10),
                                   exact.candidates(queries, 10), strict=True):
        dists = loss.cdist(query[None], embs[rows])[0]
        truth = set(rows[np.argsort(dists, kind='stable')[:10]].tolist())
        recall.append(len(truth & set(approx.tolist())) / 10)
    assert np.mean(recall) >= 0.99, (np.mean(recall), searcher.params)


# ----------------------------------------------------------------------------- parts
def write_part(folder, name, embs, rows, total, dataset='d1', checkpoint='checkpoint-5'):
    path = folder / name
    common.save_embeddings(path, embs, attrs={'part_rows': rows, 'part_total': total,
                                              'part_dataset': dataset,
                                              'part_checkpoint': checkpoint})
    return path


def test_parts_join_and_refusals(tmp_path, capsys):
    rng = np.random.default_rng(6)
    whole = rng.normal(size=(10, 3)).astype(np.float32)
    parts = [write_part(tmp_path, f'p{i}.h5', whole[a:b], (a, b), 10)
             for i, (a, b) in enumerate([(0, 3), (3, 6), (6, 10)])]
    np.testing.assert_array_equal(common.load_embedding_parts(parts[::-1]), whole)
    code, out, err = run(['join', '--parts', *parts, '--out', tmp_path / 'all.h5'], capsys)
    assert code == 0 and 'joined 3 parts (10 rows)' in out, err
    assert (tmp_path / 'all.h5').stat().st_size < 10_000  # no data copied
    np.testing.assert_array_equal(common.load_embedding_parts([tmp_path / 'all.h5']), whole)
    cases = {
        'rows 3-5 of 10 are missing': [parts[0], parts[2]],
        'rows 6-9 of 10 are missing': parts[:2],
        'overlaps another part': [*parts, write_part(tmp_path, 'o.h5', whole[5:7], (5, 7), 10)],
        "part_dataset 'd2' vs 'd1'": [parts[0], parts[1],
                                     write_part(tmp_path, 'm.h5', whole[6:], (6, 10), 10, 'd2')],
        "part_checkpoint 'checkpoint-9'": [
            parts[0], parts[1],
            write_part(tmp_path, 'c.h5', whole[6:], (6, 10), 10, checkpoint='checkpoint-9')],
        'rows 3-9 of 10 are missing': [parts[0]],
    }
    for expected, files in cases.items():
        with pytest.raises(common.InputError, match=expected):
            common.load_embedding_parts(files)
    parts[1].rename(tmp_path / 'gone.h5')
    with pytest.raises(common.InputError, match='its part p1.h5 is missing'):
        common.load_embedding_parts([tmp_path / 'all.h5'])


@pytest.mark.parametrize('module, argv, expected', [
    ('faiss', ['index', '--embeddings', 'g.h5', '--dataset', 'g.csv', '--out', 'new', '--index',
               'faiss'], '--index faiss needs faiss-cpu (pip install -r requirements-search.txt)'),
    ('fastapi', ['serve', '--index', 'idx', '--export', 'e'],
     'search.py serve needs fastapi (pip install -r requirements-search.txt)'),
])
def test_without_the_optional_packages_one_line_says_what_to_install(
        tmp_path, capsys, monkeypatch, module, argv, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # `import` then fails as if not installed
    write_set(tmp_path, 'g', np.zeros((3, 2), np.float32), ['a', 'b', 'c'])
    code, _, err = run(argv, capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'new').exists()


def test_faiss_index_takes_additions_and_reloads_them(tmp_path, capsys):
    pytest.importorskip('faiss', reason='faiss-cpu is not installed (requirements-search.txt)')
    rng = np.random.default_rng(7)
    embs, pids = clustered(rng, 300, 8, 30)
    h5, csv = write_set(tmp_path, 'g', embs, pids)
    code, out, err = run(['index', '--embeddings', h5, '--dataset', csv, '--out',
                          tmp_path / 'idx', '--index', 'faiss'], capsys)
    assert code == 0 and '"type": "HNSW"' in out, err
    info = json.loads((tmp_path / 'idx' / 'index.json').read_text())
    assert info['faiss']['efSearch'] >= 8 and info['faiss']['tuned_recall_at_k'] >= 0.995
    new = embs[:2] + 100  # far from everything: only the faiss index can propose them
    h5_new, csv_new = write_set(tmp_path, 'new', new, ['x', 'y'], 'new')
    assert run(['index', '--add', '--embeddings', h5_new, '--dataset', csv_new, '--out',
                tmp_path / 'idx'], capsys)[0] == 0
    index = gallery.Gallery(tmp_path / 'idx')
    assert index.searcher.index.ntotal == 302
    assert [hits[0] for hits in index.search(new, 1)] == [(300, 1e-6), (301, 1e-6)]
