"""data/prepare.py, run as users run it, on trees of empty files in each dataset's real layout."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA, assert_refused_and_kept, file_size_limit, run_read_only

PREPARE = ROOT / 'data' / 'prepare.py'


def prepare(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PREPARE), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def touch(root: Path, fids) -> None:
    for fid in fids:
        path = root / fid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def read_rows(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(',')) for line in path.read_text().splitlines()]


def assert_input_error(result: subprocess.CompletedProcess, *words: str) -> None:
    # Warnings may come first; the error is the last line, and there is no traceback.
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('prepare.py: error: '), result.stderr
    for word in words:
        assert word in last, last


# ----------------------------------------------------------------------------- Market, Duke
OFFICIAL = {'market1501': 'market1501', 'duke': 'dukeMTMC'}


@pytest.mark.parametrize('dataset', sorted(OFFICIAL))
def test_recreates_the_official_lists(dataset, tmp_path):
    shared = [SHARED_DATA / f'{OFFICIAL[dataset]}_{split}.csv' for split in ('train', 'query',
                                                                              'test')]
    if not all(path.is_file() for path in shared):
        pytest.skip(f'the official {dataset} lists are not in {SHARED_DATA}')
    fids = [line.split(',', 1)[1] for path in shared for line in path.read_text().splitlines()]
    # Created in reverse order, with extras that real downloads have and that are not images.
    touch(tmp_path / 'ds', reversed(fids))
    touch(tmp_path / 'ds', ['bounding_box_test/Thumbs.db', 'query/._0001_c1s1_000151_00.jpg'])
    result = prepare(dataset, tmp_path / 'ds', '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    for split, path in zip(('train', 'query', 'test'), shared, strict=True):
        assert (tmp_path / 'out' / f'{dataset}_{split}.csv').read_bytes() == path.read_bytes()


MARKET_NAMES = {
    'bounding_box_train': ['0002_c1s1_000451_03.jpg', '0007_c2s3_070952_01.jpg',
                           '0002_c2s1_000301_01.jpg'],
    'query': ['0003_c1s1_004356_00.jpg', '0001_c1s1_001051_00.jpg',
              '1488_c2s3_065527_00.jpg.jpg'],
    'bounding_box_test': ['0001_c5s1_001426_01.jpg', '-1_c1s1_000401_03.jpg',
                          '0000_c1s1_000151_01.jpg', '0003_c6s2_099943_02.jpg'],
}
DUKE_NAMES = {
    'bounding_box_train': ['0008_c1_f0061214.jpg', '0001_c2_f0046182.jpg'],
    'query': ['0005_c2_f0046985.jpg', '0019_c1_f0052375.jpg'],
    'bounding_box_test': ['0019_c3_f0060240.jpg', '0002_c1_f0044158.jpg',
                          '0005_c5_f0051781.jpg'],
}


@pytest.mark.parametrize('dataset, names', [('market1501', MARKET_NAMES), ('duke', DUKE_NAMES)])
def test_small_tree_sorted_with_pids_as_written(dataset, names, tmp_path):
    touch(tmp_path / 'ds', [f'{sub}/{name}' for sub, files in names.items() for name in files])
    result = prepare(dataset, tmp_path / 'ds', '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    for split, sub in (('train', 'bounding_box_train'), ('query', 'query'),
                       ('test', 'bounding_box_test')):
        rows = read_rows(tmp_path / 'out' / f'{dataset}_{split}.csv')
        assert [fid for _, fid in rows] == sorted(f'{sub}/{name}' for name in names[sub])
        assert all(pid == fid.split('/')[1].split('_')[0] for pid, fid in rows)
    assert (tmp_path / 'out' / f'{dataset}_test.csv').read_bytes().endswith(b'.jpg\n')


def test_market_gt_bbox_and_500k_distractors(tmp_path):
    names = {sub: files for sub, files in MARKET_NAMES.items()}
    touch(tmp_path / 'ds', [f'{sub}/{name}' for sub, files in names.items() for name in files])
    result = prepare('market1501', tmp_path / 'ds', '--out', tmp_path / 'out')
    assert 'gt_bbox is missing: market1501_gt_bbox.csv is not written' in result.stderr
    assert not (tmp_path / 'out' / 'market1501_gt_bbox.csv').exists()
    touch(tmp_path / 'ds', ['gt_bbox/0002_c1s1_000451_00.jpg', 'gt_bbox/0001_c2s1_000301_00.jpg'])
    touch(tmp_path / 'distractors_500k', ['images/0000_c1s1_000000_00.jpg',
                                          'images/0000_c3s1_000002_01.jpg'])
    result = prepare('market1501', tmp_path / 'ds', '--out', tmp_path / 'out', '--distractors',
                     tmp_path / 'distractors_500k')
    assert result.returncode == 0, result.stderr
    assert read_rows(tmp_path / 'out' / 'market1501_gt_bbox.csv') == [
        ('0001', 'gt_bbox/0001_c2s1_000301_00.jpg'), ('0002', 'gt_bbox/0002_c1s1_000451_00.jpg')]
    test = read_rows(tmp_path / 'out' / 'market1501_test.csv')
    assert read_rows(tmp_path / 'out' / 'market1501_test_500k.csv') == test + [
        ('0000', '../distractors_500k/images/0000_c1s1_000000_00.jpg'),
        ('0000', '../distractors_500k/images/0000_c3s1_000002_01.jpg')]
    touch(tmp_path / 'distractors_500k', ['images/holiday.jpg'])
    assert_input_error(prepare('market1501', tmp_path / 'ds', '--out', tmp_path / 'out',
                               '--distractors', tmp_path / 'distractors_500k'), 'holiday.jpg')
    assert_input_error(prepare('market1501', tmp_path / 'ds', '--distractors', tmp_path / 'no'),
                       'is not a folder')


@pytest.mark.parametrize('failure', ['disk full', 'read-only folder'])
def test_failed_write_keeps_every_previous_list(failure, tmp_path):
    touch(tmp_path / 'ds', [f'{sub}/{name}' for sub, files in MARKET_NAMES.items()
                            for name in files])
    assert prepare('market1501', tmp_path / 'ds', '--out', tmp_path / 'new').returncode == 0
    sizes = {path.name: path.stat().st_size for path in (tmp_path / 'new').glob('*.csv')}
    out = tmp_path / 'out'
    out.mkdir()
    for name in sizes:
        (out / name).write_text('old,list.jpg\n')
    command = [sys.executable, PREPARE, 'market1501', tmp_path / 'ds', '--out', out]
    if failure == 'disk full':  # the smallest list fits, the largest does not: none is replaced
        limit = (min(sizes.values()) + max(sizes.values())) // 2
        assert min(sizes.values()) < limit < max(sizes.values())
        result = subprocess.run(list(map(str, command)), capture_output=True, text=True,
                                timeout=120, preexec_fn=file_size_limit(limit))
    else:
        result = run_read_only(out, command, capture_output=True, text=True, timeout=120)
    why = 'File too large' if failure == 'disk full' else 'Read-only file system'
    culprit = out / result.stderr.strip().split('cannot write ')[-1].split(':')[0].split('/')[-1]
    assert_refused_and_kept(result, 'prepare.py', culprit, b'old,list.jpg\n', why)
    for name in sizes:
        assert (out / name).read_text() == 'old,list.jpg\n', name
    assert sorted(path.name for path in out.iterdir()) == sorted(sizes)


def test_missing_folder_is_named(tmp_path):
    touch(tmp_path / 'ds', [f'{sub}/{name}' for sub, files in MARKET_NAMES.items()
                            if sub != 'query' for name in files])
    assert_input_error(prepare('market1501', tmp_path / 'ds', '--out', tmp_path / 'out'),
                       'query is missing')
    assert not (tmp_path / 'out').exists()
    assert_input_error(prepare('duke', tmp_path / 'nowhere'), 'nowhere')


def test_unparsable_names_listed_or_skipped(tmp_path):
    touch(tmp_path / 'ds', [f'{sub}/{name}' for sub, files in MARKET_NAMES.items()
                            for name in files])
    touch(tmp_path / 'ds', ['query/holiday.jpg', 'bounding_box_test/0001_c1_f0044158.jpg'])
    result = prepare('market1501', tmp_path / 'ds', '--out', tmp_path / 'out')
    assert_input_error(result, 'query/holiday.jpg', '--skip_unparsable')
    assert not (tmp_path / 'out').exists()
    result = prepare('market1501', tmp_path / 'ds', '--out', tmp_path / 'out', '--skip_unparsable')
    assert result.returncode == 0, result.stderr
    assert 'holiday.jpg' in result.stderr
    written = (tmp_path / 'out' / 'market1501_query.csv').read_text()
    assert 'holiday' not in written and '0001_c1s1_001051_00.jpg' in written


def test_empty_dataset(tmp_path):
    touch(tmp_path / 'ds', ['bounding_box_train/0001_c2_f0046182.jpg',
                            'query/0005_c2_f0046985.jpg'])
    (tmp_path / 'ds' / 'bounding_box_test').mkdir()
    assert_input_error(prepare('duke', tmp_path / 'ds', '--out', tmp_path / 'out'),
                       'duke_test.csv', 'empty')


# ----------------------------------------------------------------------------- MSMT17
MSMT_LISTS = {
    'list_train.txt': ('train', ['0001/0001_011_01_0303morning_0035_1.jpg 1',
                                 '0000/0000_000_01_0303morning_0008_0.jpg 0']),
    'list_val.txt': ('train', ['0000/0000_003_05_0303morning_0450_1.jpg 0']),
    'list_query.txt': ('test', ['0002/0002_017_12_0303noon_1120_0.jpg 2',
                                '0000/0000_000_01_0303morning_0015_0.jpg 0']),
    'list_gallery.txt': ('test', ['0000/0000_001_07_0303afternoon_0190_3.jpg 0',
                                  '0002/0002_005_03_0114morning_0333_2.jpg 2']),
}


@pytest.mark.parametrize('version', ['V1', 'V2'])
def test_msmt17_keeps_list_order(version, tmp_path):
    folder = {'train': 'train', 'test': 'test'} if version == 'V1' else {
        'train': 'mask_train_v2', 'test': 'mask_test_v2'}
    root = tmp_path / 'MSMT17'
    for list_name, (part, lines) in MSMT_LISTS.items():
        touch(root / folder[part], [line.split()[0] for line in lines])
        (root / list_name).write_text(''.join(line + '\n' for line in lines))
    result = prepare('msmt17', root, '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr

    def expected(list_name):
        part, lines = MSMT_LISTS[list_name]
        return [(line.split('/')[0], f'{folder[part]}/{line.split()[0]}') for line in lines]
    out = tmp_path / 'out'
    assert read_rows(out / 'msmt17_train.csv') == expected('list_train.txt')
    assert read_rows(out / 'msmt17_val.csv') == expected('list_val.txt')
    assert read_rows(out / 'msmt17_trainval.csv') == (expected('list_train.txt')
                                                      + expected('list_val.txt'))
    assert read_rows(out / 'msmt17_query.csv') == expected('list_query.txt')
    assert read_rows(out / 'msmt17_test.csv') == expected('list_gallery.txt')


def test_msmt17_bad_lists(tmp_path):
    root = tmp_path / 'MSMT17'
    for list_name, (part, lines) in MSMT_LISTS.items():
        touch(root / part, [line.split()[0] for line in lines])
        (root / list_name).write_text(''.join(line + '\n' for line in lines))
    (root / 'list_val.txt').write_text('0000/0000_003_05_0303morning_0450_1.jpg 7\n')
    assert_input_error(prepare('msmt17', root, '--out', tmp_path / 'out'), 'list_val.txt:1')
    (root / 'list_val.txt').write_text('0009/0009_003_05_0303morning_0450_1.jpg 9\n')
    assert_input_error(prepare('msmt17', root, '--out', tmp_path / 'out'), 'missing',
                       '0009_003_05_0303morning_0450_1.jpg')
    (root / 'list_val.txt').unlink()
    assert_input_error(prepare('msmt17', root, '--out', tmp_path / 'out'), 'list_val.txt')


# ----------------------------------------------------------------------------- CUHK03
CUHK_NAMES = {'bounding_box_train': ['0003_c2_7.png', '0001_c1_1.png'],
              'query': ['0700_c1_2.png'], 'bounding_box_test': ['0700_c2_6.png', '0699_c1_3.png']}


def test_cuhk03_both_variants(tmp_path):
    for variant in ('detected', 'labeled'):
        touch(tmp_path / 'cuhk03-np' / variant, [f'{sub}/{name}' for sub, files in
                                                 CUHK_NAMES.items() for name in files])
    result = prepare('cuhk03', tmp_path / 'cuhk03-np', '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    for variant in ('detected', 'labeled'):
        rows = read_rows(tmp_path / 'out' / f'cuhk03_{variant}_train.csv')
        assert rows == [('0001', f'{variant}/bounding_box_train/0001_c1_1.png'),
                        ('0003', f'{variant}/bounding_box_train/0003_c2_7.png')]
        assert (tmp_path / 'cuhk03-np' / rows[0][1]).is_file()
        assert len(read_rows(tmp_path / 'out' / f'cuhk03_{variant}_test.csv')) == 2


def test_cuhk03_one_variant_and_bad_trees(tmp_path):
    root = tmp_path / 'cuhk03-np'
    touch(root / 'detected', [f'{sub}/{name}' for sub, files in CUHK_NAMES.items()
                              for name in files])
    result = prepare('cuhk03', root, '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
        'cuhk03_detected_query.csv', 'cuhk03_detected_test.csv', 'cuhk03_detected_train.csv']
    assert_input_error(prepare('cuhk03', root, '--variant', 'labeled', '--out', tmp_path / 'o2'),
                       'labeled')
    assert_input_error(prepare('cuhk03', tmp_path / 'out', '--out', tmp_path / 'o3'),
                       'detected/', 'labeled/')


# ----------------------------------------------------------------------------- MARS
def mars_tree(root: Path) -> dict[str, list[str]]:
    """Two training and three test identities (one junk 00-1, one distractor 0000)."""
    tracks = {'bbox_train': [('0001', 1, 1, 3), ('0001', 2, 1, 2), ('0003', 4, 2, 2)],
              'bbox_test': [('0000', 1, 1, 2), ('00-1', 3, 1, 1), ('0002', 1, 1, 3),
                            ('0002', 5, 1, 2), ('0004', 2, 1, 2), ('0004', 1, 3, 2)]}
    names = {}
    for sub, specs in tracks.items():
        names[sub] = [f'{pid}C{cam}T{track:04d}F{frame:03d}.jpg'
                      for pid, cam, track, n in specs for frame in range(1, n + 1)]
        touch(root / sub, [f'{name[:4]}/{name}' for name in names[sub]])
    return names


def test_mars_with_info_files(tmp_path):
    scipy_io = pytest.importorskip('scipy.io', reason='scipy (a scikit-learn dependency) is needed')
    root = tmp_path / 'MARS'
    names = mars_tree(root)
    # As in the real info/: test_name.txt in tracklet order, tracks as 1-based (start, end, pid,
    # camera) rows, and the query as 1-based track indices.
    order = ['00-1', '0000', '0002', '0004']
    test_names = sorted(names['bbox_test'], key=lambda n: (order.index(n[:4]), n))
    (root / 'info').mkdir()
    (root / 'info' / 'test_name.txt').write_text(''.join(n + '\n' for n in test_names))
    tracks, start = [], 0
    for key in sorted({n[:11] for n in test_names}, key=lambda k: test_names.index(k + 'F001.jpg')):
        count = sum(n.startswith(key) for n in test_names)
        pid = -1 if key.startswith('00-1') else int(key[:4])
        tracks.append([start + 1, start + count, pid, int(key[5])])
        start += count
    scipy_io.savemat(root / 'info' / 'tracks_test_info.mat',
                     {'track_test_info': np.array(tracks, np.float64)})
    query_tracks = [i for i, track in enumerate(tracks) if track[2] in (2, 4) and track[3] == 1]
    scipy_io.savemat(root / 'info' / 'query_IDX.mat',
                     {'query_IDX': np.array([[i + 1 for i in query_tracks]], np.float64)})

    result = prepare('mars', root, '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    out = tmp_path / 'out'
    train, test = read_rows(out / 'mars_train.csv'), read_rows(out / 'mars_test.csv')
    for rows, sub in ((train, 'bbox_train'), (test, 'bbox_test')):
        assert [fid for _, fid in rows] == sorted(f'{sub}/{n[:4]}/{n}' for n in names[sub])
    assert {pid for pid, _ in test} == {'0000', '00-1', '0002', '0004'}
    query = read_rows(out / 'mars_query.csv')
    assert [fid for _, fid in query] == sorted(f'bbox_test/{n[:4]}/{n}' for n in test_names
                                               if n[:4] in ('0002', '0004') and n[5] == '1')
    assert all(pid == fid.split('/')[1] for pid, fid in query)

    # A tracklet whose identity disagrees with its file names.
    tracks[query_tracks[0]][2] = 7
    scipy_io.savemat(root / 'info' / 'tracks_test_info.mat',
                     {'track_test_info': np.array(tracks, np.float64)})
    assert_input_error(prepare('mars', root, '--out', tmp_path / 'o2'), 'identity 7')


def test_mars_without_info_and_bad_names(tmp_path):
    root = tmp_path / 'MARS'
    mars_tree(root)
    result = prepare('mars', root, '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    assert 'mars_query.csv is not written' in result.stderr
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['mars_test.csv',
                                                                    'mars_train.csv']
    touch(root, ['bbox_train/0005/0001C1T0001F009.jpg'])
    assert_input_error(prepare('mars', root, '--out', tmp_path / 'o2'), '0005/0001C1T0001F009')
    touch(root, ['bbox_train/0005/frame.jpg'])
    assert_input_error(prepare('mars', root, '--out', tmp_path / 'o2'), 'frame.jpg')
    (root / 'bbox_test').rename(root / 'test')
    assert_input_error(prepare('mars', root, '--out', tmp_path / 'o2', '--skip_unparsable'),
                       'bbox_test is missing')


# ----------------------------------------------------------------------------- folders
def folders_tree(root: Path, n_ids: int = 10) -> list[str]:
    """Identities with 1-6 images from 1-3 cameras; one keeps its images in a sub-folder."""
    rng = np.random.default_rng(5)
    fids = []
    for i in range(n_ids):
        n = 1 + i % 6
        sub = 'day1/' if i == 3 else ''
        fids += [f'person{i:02d}/{sub}img_cam{rng.integers(1, 4)}_{j}.png' for j in range(n)]
    touch(root, fids)
    return fids


def test_folders_without_split(tmp_path):
    fids = folders_tree(tmp_path / 'mine')
    touch(tmp_path / 'mine', ['person00/notes.txt'])
    result = prepare('folders', tmp_path / 'mine', '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path / 'out' / 'mine.csv')
    assert [fid for _, fid in rows] == sorted(fids)
    assert all(pid == fid.split('/')[0] for pid, fid in rows)


def test_folders_split_by_identity(tmp_path):
    folders_tree(tmp_path / 'mine', n_ids=20)
    args = ['folders', tmp_path / 'mine', '--name', 'own', '--test_fraction', '0.5']
    outputs = []
    for seed, out in ((3, 'a'), (3, 'b'), (4, 'c')):
        result = prepare(*args, '--seed', seed, '--out', tmp_path / out)
        assert result.returncode == 0, result.stderr
        outputs.append([(tmp_path / out / f'own_{s}.csv').read_text()
                        for s in ('train', 'query', 'test')])
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]
    train, query, test = (read_rows(tmp_path / 'a' / f'own_{s}.csv')
                          for s in ('train', 'query', 'test'))
    train_pids, test_pids = {p for p, _ in train}, {p for p, _ in test}
    assert len(train_pids) == len(test_pids) == 10 and not train_pids & test_pids
    assert not {f for _, f in query} & {f for _, f in test}
    per_pid = {}
    for pid, _ in query:
        per_pid[pid] = per_pid.get(pid, 0) + 1
    # One query per identity (--query_per_id 1), for identities with more than one image.
    assert set(per_pid.values()) == {1}
    totals = {p: sum(q == p for q, _ in query + test) for p in test_pids}
    assert set(per_pid) == {p for p in test_pids if totals[p] > 1}


def test_folders_query_per_camera(tmp_path):
    folders_tree(tmp_path / 'mine', n_ids=20)
    result = prepare('folders', tmp_path / 'mine', '--test_fraction', '0.5', '--camera_regex',
                     r'_cam(\d+)_', '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    query, test = (read_rows(tmp_path / 'out' / f'mine_{s}.csv') for s in ('query', 'test'))

    def cam(fid):
        return re.search(r'_cam(\d+)_', fid).group(1)
    keys = [(pid, cam(fid)) for pid, fid in query]
    assert len(keys) == len(set(keys)) > 0
    for pid, fid in query:
        assert any(p == pid and cam(f) != cam(fid) for p, f in test), (pid, fid)


def test_folders_bad_input(tmp_path):
    folders_tree(tmp_path / 'mine')
    touch(tmp_path / 'mine', ['loose.jpg'])
    assert_input_error(prepare('folders', tmp_path / 'mine', '--out', tmp_path / 'o'), 'loose.jpg')
    assert_input_error(prepare('folders', tmp_path / 'mine', '--camera_regex', 'cam', '--out',
                               tmp_path / 'o'), 'one group')
    assert_input_error(prepare('folders', tmp_path / 'mine', '--test_fraction', '1.5'), '1.5')
    (tmp_path / 'empty' / 'person').mkdir(parents=True)
    assert_input_error(prepare('folders', tmp_path / 'empty', '--out', tmp_path / 'o'), 'no images')
