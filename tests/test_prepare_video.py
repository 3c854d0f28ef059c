"""data/prepare.py duke_video and tracklet_folders on small trees of the real layouts, and the
tracklets that evaluate.py --tracklets reads from their CSVs."""
from test_prepare import assert_input_error, prepare, read_rows, touch

import common
import tracklets
from excluders import diagonal, duke_video

# DukeMTMC-VideoReID: split/IDENTITY/TRACKLET/IDENTITY_Ccam_Fframe_Xsomething.jpg; the first
# release named frames without underscores.
DUKE_VIDEO = [
    'train/0001/0001/0001_C1_F0001_X00001.jpg', 'train/0001/0001/0001_C1_F0002_X00001.jpg',
    'train/0001/0002/0001_C2_F0001_X00002.jpg', 'train/0003/0007/0003C5F0010X00007.jpg',
    'query/0005/0011/0005_C2_F0001_X00011.jpg', 'query/0005/0011/0005_C2_F0002_X00011.jpg',
    'gallery/0005/0012/0005_C3_F0001_X00012.jpg', 'gallery/0005/0013/0005_C2_F0001_X00013.jpg',
    'gallery/0005/0013/0005_C2_F0002_X00013.jpg', 'gallery/0006/0014/0006_C3_F0001_X00014.jpg',
]


def test_duke_video_tree(tmp_path):
    root = tmp_path / 'DukeMTMC-VideoReID'
    touch(root, reversed(DUKE_VIDEO))
    touch(root, ['gallery/0006/0014/Thumbs.db', 'train/0001/0001/._0001_C1_F0003_X00001.jpg'])
    result = prepare('duke_video', root, '--out', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    out = tmp_path / 'out'
    expected = {'train': DUKE_VIDEO[:4], 'query': DUKE_VIDEO[4:6], 'test': DUKE_VIDEO[6:]}
    for split, fids in expected.items():
        assert read_rows(out / f'duke_video_{split}.csv') == [(f.split('/')[1], f)
                                                               for f in sorted(fids)]
    # evaluate.py --tracklets: a tracklet is a folder (and camera), its rule DukeMTMC-reID's.
    test = tracklets.Tracklets(*common.load_dataset(out / 'duke_video_test.csv'),
                               duke_video.PATTERN, 'test')
    query = tracklets.Tracklets(*common.load_dataset(out / 'duke_video_query.csv'),
                                duke_video.PATTERN, 'query')
    assert list(test.names) == ['gallery/0005/0012/0005_C3', 'gallery/0005/0013/0005_C2',
                                'gallery/0006/0014/0006_C3']
    assert test.sizes.tolist() == [1, 2, 1]
    mask = tracklets.TrackletExcluder(duke_video.Excluder, query, test)(query.names)
    assert mask.tolist() == [[False, True, False]]  # identity 0005 seen by camera 2


def test_duke_video_bad_trees(tmp_path):
    root = tmp_path / 'ds'
    touch(root, DUKE_VIDEO)
    (root / 'gallery' / '0006' / '0015').mkdir()
    assert_input_error(prepare('duke_video', root, '--out', tmp_path / 'o'),
                       'gallery/0006/0015/', 'hold no frames')
    result = prepare('duke_video', root, '--out', tmp_path / 'o', '--skip_unparsable')
    assert result.returncode == 0 and 'gallery/0006/0015/' in result.stderr
    (root / 'gallery' / '0006' / '0015').rmdir()
    touch(root, ['gallery/0006/0014/snapshot.jpg', 'query/0005/loose_C2_F0001.jpg'])
    assert_input_error(prepare('duke_video', root, '--out', tmp_path / 'o'),
                       'query/0005/loose_C2_F0001.jpg')  # a frame outside a tracklet folder
    (root / 'query/0005/loose_C2_F0001.jpg').unlink()
    assert_input_error(prepare('duke_video', root, '--out', tmp_path / 'o'), 'snapshot.jpg')
    (root / 'gallery/0006/0014/snapshot.jpg').unlink()
    touch(root, ['gallery/0007/0016/0008_C1_F0001_X00016.jpg'])
    assert_input_error(prepare('duke_video', root, '--out', tmp_path / 'o'),
                       '0008_C1_F0001_X00016.jpg', 'not the identity')
    (root / 'gallery' / '0007').rename(root / 'elsewhere')
    (root / 'query').rename(root / 'queries')
    assert_input_error(prepare('duke_video', root, '--out', tmp_path / 'o'), 'query is missing')


def tracklet_tree(root, identities=6, per_identity=3):
    fids = [f'person{i}/walk{t}/{f:03d}.png' for i in range(identities)
            for t in range(per_identity) for f in range(1 + (i + t) % 3)]
    touch(root, fids)
    return fids


def test_tracklet_folders_whole_and_split(tmp_path):
    root = tmp_path / 'mine'
    fids = tracklet_tree(root)
    result = prepare('tracklet_folders', root, '--out', tmp_path / 'all')
    assert result.returncode == 0, result.stderr
    assert read_rows(tmp_path / 'all' / 'mine.csv') == [(f.split('/')[0], f) for f in sorted(fids)]

    args = ['--test_fraction', '0.5', '--seed', '3', '--query_per_id', '1']
    assert prepare('tracklet_folders', root, '--out', tmp_path / 'a', *args).returncode == 0
    assert prepare('tracklet_folders', root, '--out', tmp_path / 'b', *args).returncode == 0
    split = {name: read_rows(tmp_path / 'a' / f'mine_{name}.csv')
             for name in ('train', 'query', 'test')}
    for name in split:  # same seed, same files
        assert (tmp_path / 'b' / f'mine_{name}.csv').read_text() == \
            (tmp_path / 'a' / f'mine_{name}.csv').read_text()
    train_ids = {pid for pid, _ in split['train']}
    test_ids = {pid for pid, _ in split['test']}
    assert len(train_ids) == len(test_ids) == 3 and not train_ids & test_ids
    folder = {name: {fid.rsplit('/', 1)[0] for _, fid in rows} for name, rows in split.items()}
    assert not folder['query'] & folder['test']  # a query tracklet is not in the gallery
    assert len(folder['query']) == 3  # one per test identity
    assert sorted(f for rows in split.values() for _, f in rows) == sorted(fids)
    # evaluate.py --excluder diagonal --tracklets: one tracklet per folder.
    query = tracklets.Tracklets(*common.load_dataset(tmp_path / 'a' / 'mine_query.csv'),
                                getattr(diagonal, 'PATTERN', None), 'query')
    assert sorted(query.names) == sorted(folder['query'])


def test_tracklet_folders_bad_trees(tmp_path):
    root = tmp_path / 'mine'
    tracklet_tree(root, identities=2)
    touch(root, ['person0/stray.jpg'])
    assert_input_error(prepare('tracklet_folders', root, '--out', tmp_path / 'o'),
                       'person0/stray.jpg')
    (root / 'person0' / 'stray.jpg').unlink()
    (root / 'person1' / 'empty').mkdir()
    assert_input_error(prepare('tracklet_folders', root, '--out', tmp_path / 'o'),
                       'person1/empty/')
    assert_input_error(prepare('tracklet_folders', root, '--out', tmp_path / 'o',
                               '--skip_unparsable', '--test_fraction', '0.2'), '--test_fraction')
    empty = tmp_path / 'nothing'
    empty.mkdir()
    assert_input_error(prepare('tracklet_folders', empty, '--out', tmp_path / 'o'), 'no frames')
    assert not (tmp_path / 'o').exists()
