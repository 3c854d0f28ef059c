"""tracklets.py and evaluate.py --tracklets: the MARS protocol against a direct per-query version
of the authors' MATLAB code, on a hand-made case; bad input ends in one line."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from sklearn.metrics import average_precision_score

import common
import evaluate
import tracklets
from excluders import diagonal, mars

# (identity, camera, tracklet number, frames): what each case is there for.
GALLERY = [
    ('0001', 1, 1, 3),  # query A
    ('0001', 1, 2, 2),  # A's identity and camera: ignored for A
    ('0001', 2, 3, 1),  # single frame, a match of A
    ('0001', 3, 4, 4),  # a match of A (query A2 from this camera too)
    ('0002', 1, 1, 2),  # query B: identity seen by one camera only, no valid match
    ('0002', 1, 2, 1),
    ('0003', 2, 1, 3),  # query C lists only two of its three frames
    ('0003', 4, 2, 2),
    ('0003', 2, 3, 1),  # C's camera: ignored for C
    ('0000', 1, 1, 2),  # distractors: negatives that count
    ('0000', 3, 2, 1),
    ('00-1', 2, 1, 2),  # junk: ignored for everyone
    ('00-1', 4, 2, 1),
    ('0004', 5, 1, 2),  # query D, a single match
    ('0004', 6, 2, 2),
]
QUERIES = {'0001C1T0001': None, '0001C3T0004': None, '0002C1T0001': None,
           '0003C2T0001': [1, 3], '0004C5T0001': None}  # frames listed (None: all)


def fid(pid, cam, number, frame):
    return f'bbox_test/{pid}/{pid}C{cam}T{number:04d}F{frame:03d}.jpg'


def hand_made(rng, dim=4):
    """Gallery and query (pids, fids, embs) frame by frame; gallery rows shuffled, so that a
    tracklet's frames are not together."""
    rows = [(pid, fid(pid, cam, number, f)) for pid, cam, number, frames in GALLERY
            for f in range(1, frames + 1)]
    centres = {pid: rng.normal(size=dim) for pid, *_ in GALLERY}
    embs = np.array([centres[pid] + 1.2 * rng.normal(size=dim) for pid, _ in rows], np.float32)
    order = rng.permutation(len(rows))
    gallery_pids = np.array([rows[i][0] for i in order])
    gallery_fids = np.array([rows[i][1] for i in order])
    gallery_embs = embs[order]
    query = [i for i, (_, name) in enumerate(rows)
             if name.split('/')[-1][:11] in QUERIES
             and (QUERIES[name.split('/')[-1][:11]] is None
                  or int(name[-7:-4]) in QUERIES[name.split('/')[-1][:11]])]
    return (np.array([rows[i][0] for i in query]), np.array([rows[i][1] for i in query]),
            embs[query], gallery_pids, gallery_fids, gallery_embs)


def authors_protocol(data, pooling, normalize, market_ap):
    """evaluation_mars.m and process_box_feat.m, one query at a time, written out directly:
    returns the AP of each query tracklet (None: no valid match) and the CMC."""
    def pool(pids, fids, embs):
        names = sorted({f.split('/')[-1][:11] for f in fids})
        out = []
        for name in names:
            members = embs[[f.split('/')[-1][:11] == name for f in fids]]
            out.append(members.max(0) if pooling == 'max' else members.mean(0))
        out = np.array(out, np.float64)
        if normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        labels = np.array([-1 if n[:4] == '00-1' else int(n[:4]) for n in names])
        return names, labels, np.array([int(n[5]) for n in names]), out

    q_names, q_labels, q_cams, q_feats = pool(*data[:3])
    g_names, g_labels, g_cams, g_feats = pool(*data[3:])
    aps, cmcs = {}, []
    for k, name in enumerate(q_names):
        dist = np.linalg.norm(g_feats - q_feats[k], axis=1)
        good = (g_labels == q_labels[k]) & (g_cams != q_cams[k])
        junk = ((g_labels == q_labels[k]) & (g_cams == q_cams[k])) | (g_labels == -1)
        if not good.any():  # the MATLAB code divides 0 by 0 here; left out instead
            aps[name] = None
            continue
        index = np.argsort(dist, kind='stable')
        cmc = np.zeros(len(index))
        ap, old_recall, old_precision, hits, j, njunk = 0.0, 0.0, 1.0, 0, 0, 0
        for n, g in enumerate(index):  # compute_AP
            if good[g]:
                cmc[n - njunk:] = 1
            if junk[g]:
                njunk += 1
                continue
            hits += bool(good[g])
            recall, precision = hits / good.sum(), hits / (j + 1)
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision, j = recall, precision, j + 1
            if hits == good.sum():
                break
        if not market_ap:
            ap = average_precision_score(good[~junk], 1 / (1 + dist[~junk]))
        aps[name] = ap
        cmcs.append(cmc)
    return aps, np.mean(cmcs, axis=0)


def tracklet_evaluation(data, pooling, normalize, market_ap, tmp_path, excluder=mars):
    """tracklets.load + evaluate.evaluate, as evaluate.py runs them, on files written here."""
    paths = []
    for side, (pids, fids, embs) in enumerate((data[:3], data[3:])):
        csv = tmp_path / f'{side}.csv'
        csv.write_text(''.join(f'{p},{f}\n' for p, f in zip(pids, fids, strict=True)))
        common.save_embeddings(tmp_path / f'{side}.h5', embs)
        paths += [str(csv), str(tmp_path / f'{side}.h5')]
    query, gallery, tracklet_excluder, info = tracklets.load(*paths, excluder, pooling, normalize)
    result = evaluate.evaluate(query.pids, query.names, query.embs, gallery.pids, gallery.names,
                               gallery.embs, tracklet_excluder, market_ap=market_ap)
    return query, gallery, result, info


@pytest.mark.parametrize('pooling, normalize', [('max', True), ('mean', False)])
@pytest.mark.parametrize('market_ap', [True, False])
def test_equals_the_authors_protocol(pooling, normalize, market_ap, tmp_path, monkeypatch):
    monkeypatch.setattr(tracklets, 'CHUNK_ROWS', 7)  # across chunks, frames of a tracklet apart
    for seed in range(3):
        data = hand_made(np.random.default_rng(seed))
        query, gallery, result, info = tracklet_evaluation(data, pooling, normalize, market_ap,
                                                           tmp_path)
        aps, cmc = authors_protocol(data, pooling, normalize, market_ap)
        got = dict(zip([n.split('/')[-1] for n in query.names], result['aps'], strict=True))
        assert got.keys() == aps.keys()
        for name, ap in aps.items():
            assert (got[name] is None) == (ap is None), name
            if ap is not None:
                assert got[name] == pytest.approx(ap, abs=1e-9), name
        assert got['0002C1T0001'] is None  # identity seen by its own camera only
        np.testing.assert_allclose(result['CMC'], cmc, atol=1e-9)
        assert info['query_tracklets'] == len(QUERIES) and info['gallery_tracklets'] == len(GALLERY)
        assert info['query_tracklets_in_gallery'] == len(QUERIES)


def test_pooled_embeddings_and_partial_query_tracklets(tmp_path, monkeypatch):
    monkeypatch.setattr(tracklets, 'CHUNK_ROWS', 3)
    data = hand_made(np.random.default_rng(7))
    query, gallery, _, _ = tracklet_evaluation(data, 'mean', False, True, tmp_path)
    c = list(query.names).index('bbox_test/0003/0003C2T0001')
    listed = [i for i, f in enumerate(data[1]) if '0003C2T0001' in f]
    assert len(listed) == 2 and query.sizes[c] == 2
    np.testing.assert_allclose(query.embs[c], data[2][listed].mean(0), rtol=1e-6)
    g = list(gallery.names).index('bbox_test/0003/0003C2T0001')
    assert gallery.sizes[g] == 3
    assert [len(frames) for frames in gallery.shown] == [min(3, n) for n in gallery.sizes]


def test_a_folder_is_a_tracklet_without_a_pattern(tmp_path):
    """`diagonal` has no pattern: a folder is a tracklet, and only the query's own is ignored."""
    fids = np.array(['a/t1/1.jpg', 'a/t1/2.jpg', 'a/t2/1.jpg', 'b/t3/1.jpg'])
    pids = np.array(['a', 'a', 'a', 'b'])
    embs = np.array([[0, 0], [1, 0], [9, 0], [5, 0]], np.float32)
    # The query lists the second frame of a/t1 only: the rule alone (same file) would keep
    # the gallery's a/t1, whose first frame is another file.
    data = (pids[1:2], fids[1:2], embs[1:2], pids, fids, embs)
    query, gallery, result, _ = tracklet_evaluation(data, 'max', False, True, tmp_path, diagonal)
    assert list(gallery.names) == ['a/t1', 'a/t2', 'b/t3']
    excluder = tracklets.TrackletExcluder(diagonal.Excluder, query, gallery)
    assert excluder(np.array(['a/t1'])).tolist() == [[True, False, False]]
    # a/t2 is the only match, behind b/t3: the Market AP of a match at rank 2
    assert result['aps'] == [pytest.approx(0.25)]


# ----------------------------------------------------------------------------- the command line
def write_files(tmp_path, data):
    for side, (pids, fids, embs) in (('query', data[:3]), ('test', data[3:])):
        (tmp_path / f'{side}.csv').write_text(
            ''.join(f'{p},{f}\n' for p, f in zip(pids, fids, strict=True)))
        common.save_embeddings(tmp_path / f'{side}.h5', embs)
    return ['--excluder', 'mars', '--query_dataset', tmp_path / 'query.csv',
            '--query_embeddings', tmp_path / 'query.h5', '--gallery_dataset',
            tmp_path / 'test.csv', '--gallery_embeddings', tmp_path / 'test.h5']


def test_cli_writes_the_protocol_into_the_json(tmp_path):
    data = hand_made(np.random.default_rng(1))
    argv = write_files(tmp_path, data)
    out = tmp_path / 'out.json'
    done = subprocess.run([sys.executable, str(ROOT / 'evaluate.py'), *map(str, argv),
                           '--tracklets', 'max', '--tracklet_normalize', '--filename', str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'tracklets max normalized' in done.stdout
    assert '1 of 5 queries have no valid match' in done.stderr
    result = json.loads(out.read_text())
    aps, _ = authors_protocol(data, 'max', True, market_ap=True)
    assert result['ap'] == 'market1501'
    assert result['mAP'] == pytest.approx(np.mean([ap for ap in aps.values() if ap is not None]))
    assert result['unmatched_queries'] == ['bbox_test/0002/0002C1T0001']
    assert len(result['query_tracklets']) == len(result['aps']) == 5
    assert result['tracklets'] == {
        'pooling': 'max', 'normalize': True, 'query_tracklets': 5, 'gallery_tracklets': 15,
        'query_frames': len(data[1]), 'gallery_frames': len(data[4]),
        'query_tracklets_in_gallery': 5, 'single_frame_tracklets': 5}


def run_in_process(argv, monkeypatch, capsys):
    """evaluate.py's main as `python evaluate.py ARGV` runs it: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, 'argv', ['evaluate.py', *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        common.run(evaluate.main)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_sklearn_ap_flag_and_contradictions(tmp_path, monkeypatch, capsys):
    data = hand_made(np.random.default_rng(2))
    argv = [*write_files(tmp_path, data), '--tracklets', 'mean']
    code, out, _ = run_in_process([*argv, '--sklearn_ap', '--filename', tmp_path / 'o.json'],
                                  monkeypatch, capsys)
    assert code == 0
    aps, _ = authors_protocol(data, 'mean', False, market_ap=False)
    result = json.loads((tmp_path / 'o.json').read_text())
    assert result['ap'] == 'sklearn'
    assert result['mAP'] == pytest.approx(np.mean([ap for ap in aps.values() if ap is not None]))
    for extra, message in ((['--use_market_ap', '--sklearn_ap'], 'contradict'),
                           (['--multi_query', 'mean', '--multi_query_dataset', 'x',
                             '--multi_query_embeddings', 'y'], 'already a pooled tracklet')):
        code, _, err = run_in_process([*argv, *extra], monkeypatch, capsys)
        assert code == 2 and message in err and err.count('\n') == 1
    code, _, err = run_in_process(argv[:-2] + ['--tracklet_normalize'], monkeypatch, capsys)
    assert code == 2 and 'only applies with --tracklets' in err


def rename(data, side, index, new_fid=None, new_pid=None):
    data = list(data)
    pids, fids = data[3 * side].copy(), data[3 * side + 1].copy().astype(object)
    fids[index] = new_fid or fids[index]
    pids[index] = new_pid or pids[index]
    data[3 * side], data[3 * side + 1] = pids, fids.astype(str)
    return tuple(data)


@pytest.mark.parametrize('case', ['unparsable', 'split', 'two_identities', 'rows'])
def test_bad_input_is_one_line_naming_the_files(case, tmp_path, monkeypatch, capsys):
    data = hand_made(np.random.default_rng(3))
    if case == 'unparsable':
        data = rename(data, 1, 5, new_fid='bbox_test/0001/holiday.jpg')
        expected = ['holiday.jpg', 'test.csv']
    elif case == 'split':  # the query CSV gives tracklet 0001C1T0001 another identity
        rows = [i for i, f in enumerate(data[1]) if '0001C1T0001' in f]
        for row in rows:
            data = rename(data, 0, row, new_pid='0009')
        expected = ['0001C1T0001', 'query.csv', 'test.csv', '0009']
    elif case == 'two_identities':
        row = [i for i, f in enumerate(data[4]) if '0003C4T0002' in f][0]
        data = rename(data, 1, row, new_pid='0005')
        expected = ['0003C4T0002', 'test.csv', '0005']
    else:
        data = (*data[:5], data[5][:-1])
        expected = ['test.csv', 'test.h5']
    argv = [*write_files(tmp_path, data), '--tracklets', 'max']
    code, _, err = run_in_process(argv, monkeypatch, capsys)
    assert code == 2, err
    assert err.count('\n') == 1 and 'Traceback' not in err
    for word in expected:
        assert word in err
