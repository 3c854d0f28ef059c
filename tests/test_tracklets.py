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


def test_query_frames_taken_from_the_gallery(tmp_path, monkeypatch):
    """Without query embeddings the query frames are the gallery's rows of the same files:
    the same pooled queries as from their own file, in one pass over the gallery's chunks."""
    monkeypatch.setattr(tracklets, 'CHUNK_ROWS', 7)
    data = hand_made(np.random.default_rng(5))
    for pooling in ('max', 'mean'):
        query, gallery, _, _ = tracklet_evaluation(data, pooling, True, True, tmp_path)
        again, gallery_again, _, info = tracklets.load(
            str(tmp_path / '0.csv'), None, str(tmp_path / '1.csv'), str(tmp_path / '1.h5'),
            mars, pooling, True)
        assert info['query_frames_from'] == 'gallery'
        np.testing.assert_array_equal(again.names, query.names)
        np.testing.assert_allclose(again.embs, query.embs, rtol=1e-6)
        np.testing.assert_array_equal(gallery_again.embs, gallery.embs)


def test_shards_pool_as_one_file(tmp_path, monkeypatch):
    """Embeddings split over several HDF5 files (rows following each other) pool as one."""
    monkeypatch.setattr(tracklets, 'CHUNK_ROWS', 5)
    data = hand_made(np.random.default_rng(6))
    _, gallery, _, _ = tracklet_evaluation(data, 'mean', False, True, tmp_path)
    shards = [str(tmp_path / f'shard{i}.h5') for i in range(3)]
    for shard, part in zip(shards, np.array_split(data[5], [7, 8]), strict=True):
        common.save_embeddings(shard, part)
    again = tracklets.Tracklets(data[3], data[4], mars.PATTERN, 'test.csv')
    again.pool(shards, 'mean', False, 'test.csv')
    np.testing.assert_allclose(again.embs, gallery.embs, rtol=1e-6)
    with pytest.raises(common.InputError, match='29 rows but the embeddings have 8'):
        again.pool(shards[:2], 'mean', False, 'test.csv')


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
        'query_tracklets_in_gallery': 5, 'single_frame_tracklets': 5,
        'query_frames_from': 'query'}


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


@pytest.mark.parametrize('case', ['unparsable', 'split', 'two_identities', 'rows',
                                  'not_in_gallery'])
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
    elif case == 'rows':
        data = (*data[:5], data[5][:-1])
        expected = ['test.csv', 'test.h5']
    else:  # without query embeddings, a query frame that the gallery lacks
        data = rename(data, 0, 0, new_fid='bbox_test/0001/0001C1T0001F009.jpg')
        expected = ['0001C1T0001F009.jpg', 'query.csv', 'test.csv']
    argv = [*write_files(tmp_path, data), '--tracklets', 'max']
    if case == 'not_in_gallery':
        argv = argv[:4] + argv[6:]  # no --query_embeddings
    code, _, err = run_in_process(argv, monkeypatch, capsys)
    assert code == 2, err
    assert err.count('\n') == 1 and 'Traceback' not in err
    for word in expected:
        assert word in err


def test_aqe_and_rerank_on_tracklets_are_those_of_pooled_images(tmp_path, monkeypatch, capsys):
    """--aqe and --rerank with --tracklets give what the image evaluation gives on a CSV of one
    line per tracklet (its first frame) with the pooled embeddings."""
    data = hand_made(np.random.default_rng(4))
    argv = write_files(tmp_path, data)
    options = ['--aqe', '2', '--rerank', '--k1', '4', '--k2', '2', '--filename']
    code, _, err = run_in_process([*argv, '--tracklets', 'max', '--tracklet_normalize',
                                   *options, tmp_path / 'tracklets.json'], monkeypatch, capsys)
    assert code == 0, err
    (tmp_path / 'x').mkdir()
    query, gallery, _, _ = tracklet_evaluation(data, 'max', True, True, tmp_path / 'x')
    for side, sets in (('query', query), ('test', gallery)):
        (tmp_path / f'{side}_one.csv').write_text(''.join(
            f'{p},{f}\n' for p, f in zip(sets.pids, sets.first_fids, strict=True)))
        common.save_embeddings(tmp_path / f'{side}_one.h5', sets.embs)
    images = ['--excluder', 'mars', '--use_market_ap']
    for side, flag in (('query', 'query'), ('test', 'gallery')):
        images += [f'--{flag}_dataset', tmp_path / f'{side}_one.csv',
                   f'--{flag}_embeddings', tmp_path / f'{side}_one.h5']
    code, _, err = run_in_process([*images, *options, tmp_path / 'images.json'], monkeypatch,
                                  capsys)
    assert code == 0, err
    by_tracklet = json.loads((tmp_path / 'tracklets.json').read_text())
    by_image = json.loads((tmp_path / 'images.json').read_text())
    assert by_tracklet['aqe'] == by_image['aqe'] and by_tracklet['rerank'] == by_image['rerank']
    np.testing.assert_allclose(np.array(by_tracklet['aps'], float),
                               np.array(by_image['aps'], float), atol=1e-9)
    assert by_tracklet['CMC'] == pytest.approx(by_image['CMC'])


# ----------------------------------------------------------------------------- the video demo
MAKE_DEMO = ROOT / 'data' / 'make_demo.py'
VIDEO = ['--video', '--train_ids', '3', '--test_ids', '4', '--cameras', '3', '--distractors', '2',
         '--junk', '2', '--height', '64', '--width', '32']


def make_video_demo(out):
    done = subprocess.run([sys.executable, str(MAKE_DEMO), '--out', str(out), *VIDEO],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob('*') if p.is_file()}


@pytest.fixture(scope='module')
def video_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp('video') / 'demo'
    return out, make_video_demo(out)


def test_video_demo_is_mars(video_demo, tmp_path):
    out, files = video_demo
    assert make_video_demo(tmp_path / 'again') == files  # same seed, same bytes
    # prepare.py mars reads the folder (and the info/ files) back into the very same CSVs.
    done = subprocess.run([sys.executable, str(ROOT / 'data' / 'prepare.py'), 'mars', str(out),
                           '--out', str(tmp_path / 'csv')], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for split in ('train', 'query', 'test'):
        assert (tmp_path / 'csv' / f'mars_{split}.csv').read_bytes() == files[f'demo_{split}.csv']
    pids, fids = common.load_dataset(out / 'demo_test.csv')
    test = tracklets.Tracklets(pids, fids, mars.PATTERN, 'demo_test.csv')
    query = tracklets.Tracklets(*common.load_dataset(out / 'demo_query.csv'), mars.PATTERN, 'q')
    assert set(query.names) <= set(test.names) and test.sizes.max() > 1
    assert {'0000', '00-1'} <= set(test.pids)
    excluder = tracklets.TrackletExcluder(mars.Excluder, query, test)
    answerable = (test.pids[None, :] == query.pids[:, None]) & ~excluder(query.names)
    assert answerable.any(axis=1).all()  # every query has its identity from another camera
    # Frames of a tracklet change a little; different tracklets differ more.
    import cv2
    images = [cv2.imread(str(out / f)).astype(float) for f in fids]
    within = [np.abs(images[i] - images[i + 1]).mean() for i in range(len(fids) - 1)
              if test.of_frame[i] == test.of_frame[i + 1]]
    firsts = [images[list(fids).index(f)] for f in test.first_fids]
    across = [np.abs(a - b).mean() for i, a in enumerate(firsts) for b in firsts[i + 1:]]
    assert 0 < min(within) and max(within) < min(across)


def test_report_shows_frames_per_tracklet(video_demo, tmp_path, monkeypatch, capsys):
    import cv2

    import report
    out, _ = video_demo
    argv = ['--excluder', 'mars', '--tracklets', 'mean', '--image_root', out,
            '--report', tmp_path / 'report', '--report_queries', '2', '--top_k', '3']
    for side, flag in (('query', 'query'), ('test', 'gallery')):
        fids = common.load_dataset(out / f'demo_{side}.csv')[1]
        pixels = [cv2.resize(cv2.imread(str(out / f)), (4, 8)).ravel() / 255 for f in fids]
        common.save_embeddings(tmp_path / f'{side}.h5', np.array(pixels))
        argv += [f'--{flag}_dataset', out / f'demo_{side}.csv',
                 f'--{flag}_embeddings', tmp_path / f'{side}.h5']
    code, _, err = run_in_process(argv, monkeypatch, capsys)
    assert code == 0, err
    pictures = sorted((tmp_path / 'report' / 'queries').glob('*.png'))
    assert len(pictures) == 2
    assert 'bbox_test/' in (tmp_path / 'report' / 'index.html').read_text()
    frames = [str(out / f) for f in common.load_dataset(out / 'demo_query.csv')[1][:3]]
    assert report.read_thumbnail(frames).shape == (report.THUMB[0], 3 * report.THUMB[1], 3)
    assert report.read_thumbnail([str(tmp_path / 'missing.jpg')]) is None
