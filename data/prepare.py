"""Writes the dataset CSVs (`pid,relative/path` lines) of a public re-id dataset from its folders.

    python data/prepare.py market1501 /path/to/Market-1501-v15.09.15 --out data/

Every path in a CSV is relative to the dataset folder given on the command line: pass that
folder as --image_root to train.py and embed.py. The identity column is the identity as the
dataset writes it (Market-1501 junk stays `-1`, distractors `0000`). Unless a dataset ships
its own ordered lists (MSMT17), lines are sorted by path, which is how the official
Market-1501 and DukeMTMC-reID CSVs of the 2017 code are sorted: the market1501 and duke
subcommands recreate those files byte for byte.
"""
import argparse
import contextlib
import csv
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

# Scripts in data/ run as `python data/prepare.py`: the repo root must be on the path for common.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
from excluders import duke, duke_video, market1501  # noqa: E402  (file-name patterns)

parser = argparse.ArgumentParser(
    description='Write train/query/test CSVs for a re-id dataset from its own folder layout.')
subparsers = parser.add_subparsers(dest='dataset', required=True, metavar='DATASET',
                                   help='one of: %(choices)s')


def add_dataset(name: str, description: str) -> argparse.ArgumentParser:
    sub = subparsers.add_parser(name, description=description, help=description.split(':')[0])
    sub.add_argument('root', type=Path, help='the dataset folder; CSV paths are relative to it')
    sub.add_argument('--out', type=Path, default=Path('data'),
                     help='folder the CSVs are written to, created if missing (default: data)')
    sub.add_argument('--skip_unparsable', action='store_true',
                     help='skip images whose names do not follow the dataset pattern instead of '
                          'stopping with a list of them')
    return sub


market = add_dataset('market1501', 'Market-1501: bounding_box_train, query, bounding_box_test -> '
                     'market1501_{train,query,test}.csv; gt_bbox (hand-drawn boxes, for '
                     'multi-query) -> market1501_gt_bbox.csv.')
market.add_argument('--distractors', type=Path, default=None,
                    help='the folder of the Market-1501 500k distractors (distractors_500k/, '
                         'images anywhere below it, named like Market-1501 images): also write '
                         'market1501_test_500k.csv, the test list followed by them')
add_dataset('duke', 'DukeMTMC-reID: bounding_box_train, query, bounding_box_test -> '
            'duke_{train,query,test}.csv.')
add_dataset('msmt17', 'MSMT17 (V1 or V2): list_{train,val,query,gallery}.txt with images under '
            'train/ and test/ (V2: mask_train_v2/, mask_test_v2/) -> '
            'msmt17_{train,val,trainval,query,test}.csv, in the order of the lists.')
cuhk03 = add_dataset('cuhk03', 'CUHK03 new protocol (cuhk03-np): detected/ and labeled/, each '
                     'with bounding_box_train, query, bounding_box_test -> '
                     'cuhk03_{detected,labeled}_{train,query,test}.csv.')
cuhk03.add_argument('--variant', choices=('detected', 'labeled', 'both'), default='both',
                    help='which boxes to use; both (default) writes whichever folders exist')
add_dataset('mars', 'MARS: tracklet folders bbox_train/0001/, bbox_test/0001/ and, for the query, '
            'info/test_name.txt, tracks_test_info.mat, query_IDX.mat -> '
            'mars_{train,query,test}.csv (one line per image).')
add_dataset('duke_video', 'DukeMTMC-VideoReID: train/, query/, gallery/, each IDENTITY/TRACKLET/'
            'frames -> duke_video_{train,query,test}.csv (one line per frame).')
tracklet_folders = add_dataset(
    'tracklet_folders', 'Your own video data: IDENTITY/TRACKLET/frames -> NAME.csv, or with '
    '--test_fraction NAME_{train,query,test}.csv (query tracklets held out of the gallery).')
tracklet_folders.add_argument('--name', help='prefix of the CSV names (default: the folder name)')
tracklet_folders.add_argument('--test_fraction', type=float, default=0.0,
                              help='fraction of identities held out for query/gallery, in [0, 1); '
                                   '0 (default) writes one CSV of everything')
tracklet_folders.add_argument('--seed', type=int, default=0,
                              help='seed of the identity split and query choice (default: 0)')
tracklet_folders.add_argument('--query_per_id', type=common.positive_int, default=1,
                              help='query tracklets per test identity that has more (default: 1)')
folders = add_dataset('folders', 'Your own data: one folder per identity (images anywhere below '
                      'it) -> NAME.csv, or with --test_fraction NAME_{train,query,test}.csv.')
folders.add_argument('--name', help='prefix of the CSV names (default: the folder name)')
folders.add_argument('--test_fraction', type=float, default=0.0,
                     help='fraction of identities held out for query/gallery, in [0, 1); 0 '
                          '(default) writes one CSV of everything')
folders.add_argument('--seed', type=int, default=0,
                     help='seed of the identity split and query choice (default: 0)')
folders.add_argument('--camera_regex',
                     help='regex with one group that finds the camera in a file name, e.g. '
                          r'"_c(\d+)"; then the query is one image per identity and camera')
folders.add_argument('--query_per_id', type=common.positive_int, default=1,
                     help='without --camera_regex: query images per test identity (default: 1)')

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# Market-1501-v15.09.15 has 24 files named *.jpg.jpg (identity 1488 and its neighbours in
# time); the official lists keep them, so they are images, not unparsable names.
MARKET_PATTERN = re.compile(rf'^{market1501.PATTERN}\.jpg(?:\.jpg)?$')
DUKE_PATTERN = re.compile(rf'^{duke.PATTERN}\.jpg$')
# The usual cuhk03-np names look like 0001_c1_1.png; some copies were converted to JPEG.
CUHK03_PATTERN = re.compile(r'^(\d+)_c\d+_\d+\.(?:png|jpg)$')
# Identity 00-1 marks MARS junk tracklets, 0000 its distractors.
MARS_PATTERN = re.compile(r'^(\d{4}|00-1)C\d+T\d+F\d+\.jpg$')
# DukeMTMC-VideoReID: 0001_C6_F0099_X30823.jpg, or without underscores in its first release.
DUKE_VIDEO_PATTERN = re.compile(rf'^{duke_video.PATTERN}_?X\d+\.jpg$')
MSMT17_PATTERN = re.compile(r'^(\d+)_\d+_\d+_\d+[a-z]+_\d+_\d+\.jpg$')


# ----------------------------------------------------------------------------- helpers
def is_image(path: Path) -> bool:
    # Hidden names include the `._x.jpg` resource forks that macOS zips carry; Thumbs.db and
    # similar extras are not images either.
    return not path.name.startswith('.') and path.suffix.lower() in IMAGE_SUFFIXES


def find_folder(root: Path, sub: str) -> Path:
    folder = root / sub
    if not folder.is_dir():
        raise common.InputError(f'{folder} is missing: is {root} a complete dataset folder?')
    return folder


def list_images(root: Path, sub: str, recursive: bool = False) -> list[str]:
    """The image paths under root/sub, relative to root with '/' separators, sorted."""
    folder = find_folder(root, sub)
    files = folder.rglob('*') if recursive else folder.iterdir()
    return sorted(p.relative_to(root).as_posix() for p in files if p.is_file() and is_image(p))


def unparsable(bad: list[str], what: str, skip: bool) -> None:
    """Stops on names that do not parse, listing them; with --skip_unparsable only warns."""
    if not bad:
        return
    listed = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
    if not skip:
        raise common.InputError(f'{len(bad)} files are not named like {what}: {listed} '
                                '(pass --skip_unparsable to leave them out)')
    print(common.printable(f'skipped {len(bad)} files not named like {what}: {listed}'),
          file=sys.stderr)


def parse_pids(fids: list[str], pattern: re.Pattern, what: str,
               skip: bool) -> list[tuple[str, str]]:
    """(pid, fid) rows, the pid being the pattern's first group on the file name."""
    rows, bad = [], []
    for fid in fids:
        match = pattern.match(fid.rsplit('/', 1)[-1])
        if match:
            rows.append((match.group(1), fid))
        else:
            bad.append(fid)
    unparsable(bad, what, skip)
    return rows


def write_csvs(out: Path, tables: dict[str, list[tuple[str, str]]]) -> None:
    """Writes out/<name>.csv for every table, but only once all of them are known non-empty.

    All or none: each is written under a temporary name, and they are renamed into place only
    once all are complete, so a failed write (a full disk) leaves the previous lists intact.
    """
    for name, rows in tables.items():
        if not rows:
            raise common.InputError(f'{name}.csv would be empty: no usable images found')
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise common.InputError(f'cannot write to {out}: {e.strerror or e}') from None
    with contextlib.ExitStack() as stack:  # renames when every file is written
        for name, rows in tables.items():
            tmp = stack.enter_context(common.atomic_write(out / f'{name}.csv'))
            with open(tmp, 'w', newline='', encoding='utf-8') as f:
                csv.writer(f, lineterminator='\n').writerows(rows)
    for name, rows in tables.items():
        print(f'wrote {out / name}.csv: {len(rows)} images of '
              f'{len({pid for pid, _ in rows})} identities')


def market_like(root: Path, prefix: str, pattern: re.Pattern, what: str,
                skip: bool) -> dict[str, list[tuple[str, str]]]:
    """The three tables of a Market-1501-style layout (images directly in each folder)."""
    return {f'{prefix}_{split}': parse_pids(list_images(root, sub), pattern, what, skip)
            for split, sub in (('train', 'bounding_box_train'), ('query', 'query'),
                               ('test', 'bounding_box_test'))}


def market_extras(root: Path, distractors: Path | None, test: list[tuple[str, str]],
                  skip: bool) -> dict[str, list[tuple[str, str]]]:
    """market1501_gt_bbox (when the folder is there) and, with distractors, market1501_test_500k.

    Distractor paths are relative to root like every other path, with '..' if the folder lies
    outside it; their names must parse as Market-1501 names for the evaluation's excluder.
    """
    tables = {}
    if (root / 'gt_bbox').is_dir():
        tables['market1501_gt_bbox'] = parse_pids(list_images(root, 'gt_bbox'), MARKET_PATTERN,
                                                  '0001_c1s1_001051_00.jpg', skip)
    else:
        print(f'{root}/gt_bbox is missing: market1501_gt_bbox.csv is not written', file=sys.stderr)
    if distractors is not None:
        if not distractors.is_dir():
            raise common.InputError(f'--distractors {distractors} is not a folder')
        relative = Path(os.path.relpath(distractors.resolve(), root.resolve())).as_posix()
        fids = [f'{relative}/{p.relative_to(distractors).as_posix()}'
                for p in sorted(distractors.rglob('*')) if p.is_file() and is_image(p)]
        tables['market1501_test_500k'] = test + parse_pids(fids, MARKET_PATTERN,
                                                           '0000_c1s1_000000_00.jpg', skip)
    return tables


def read_msmt17_list(root: Path, list_name: str, image_dir: str,
                     skip: bool) -> list[tuple[str, str]]:
    """(pid, fid) rows of one list_*.txt, in its order; the label must agree with the name."""
    path = root / list_name
    try:
        lines = common.read_text(path, 'the list').split('\n')
    except FileNotFoundError:
        raise common.InputError(f'{path} is missing') from None
    rows, bad, missing = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        match = MSMT17_PATTERN.match(parts[0].rsplit('/', 1)[-1]) if len(parts) == 2 else None
        if match is None or not parts[1].isdigit() or int(parts[1]) != int(match.group(1)):
            bad.append(f'{list_name}:{number} {line.strip()!r}')
            continue
        fid = f'{image_dir}/{parts[0]}'
        if not (root / fid).is_file():
            missing.append(fid)
        rows.append((match.group(1), fid))
    unparsable(bad, '"0000/0000_000_01_0303morning_0015_0.jpg 0"', skip)
    if missing:
        raise common.InputError(f'{len(missing)} images of {list_name} are missing under {root}, '
                                f'e.g. {", ".join(missing[:3])}')
    return rows


def load_mat(path: Path, key: str) -> np.ndarray:
    # scipy comes with scikit-learn, a requirement anyway; imported here as only MARS needs it.
    import scipy.io
    try:
        return np.asarray(scipy.io.loadmat(path)[key])
    except Exception as e:  # scipy's reader raises all kinds of errors on damaged files
        raise common.InputError(f'cannot read variable {key!r} of {path}: {e!r}') from None


def mars_query(root: Path, skip: bool) -> list[tuple[str, str]]:
    """Every image of the official query tracklets, from the info/ files."""
    info = root / 'info'
    names_file = info / 'test_name.txt'
    try:
        names = common.read_text(names_file, 'the list').split()
    except FileNotFoundError:
        raise common.InputError(f'{names_file} is missing') from None
    tracks = load_mat(info / 'tracks_test_info.mat', 'track_test_info')
    query_idx = load_mat(info / 'query_IDX.mat', 'query_IDX').ravel()
    if tracks.ndim != 2 or tracks.shape[1] < 4:
        raise common.InputError(f'{info}/tracks_test_info.mat: expected rows of (start, end, pid, '
                                f'camera), got shape {tracks.shape}')
    rows = []
    for idx in query_idx.astype(np.int64):  # MATLAB's 1-based indices, here and below
        if not 1 <= idx <= len(tracks):
            raise common.InputError(f'{info}/query_IDX.mat: track {idx} does not exist '
                                    f'({len(tracks)} tracks)')
        start, end, pid = (int(v) for v in tracks[idx - 1, :3])
        if not 1 <= start <= end <= len(names):
            raise common.InputError(f'{info}/tracks_test_info.mat: track {idx} spans images '
                                    f'{start}-{end}, but test_name.txt has {len(names)}')
        fids = [f'bbox_test/{name[:4]}/{name}' for name in names[start - 1:end]]
        for pid_fid in parse_pids(fids, MARS_PATTERN, '0001C1T0001F001.jpg', skip):
            if int(pid_fid[0].replace('00-1', '-1')) != pid:
                raise common.InputError(f'{pid_fid[1]}: the info files give it identity {pid}')
            rows.append(pid_fid)
    missing = [fid for _, fid in rows if not (root / fid).is_file()]
    if missing:
        raise common.InputError(f'{len(missing)} query images are missing under {root}, '
                                f'e.g. {", ".join(missing[:3])}')
    return sorted(rows, key=lambda row: row[1])


def list_tracklets(root: Path, sub: str, skip: bool) -> list[tuple[str, str]]:
    """(identity folder, fid) of every frame of root/sub/IDENTITY/TRACKLET/frame, sorted by path.

    A tracklet folder without frames, or an image elsewhere (directly in an identity folder,
    or deeper), stops it naming them; with --skip_unparsable they are left out with a warning.
    """
    folder = find_folder(root, sub) if sub else root
    rows, empty, stray = [], [], []
    for path in sorted(folder.rglob('*')):
        depth = len(path.relative_to(folder).parts)
        fid = path.relative_to(root).as_posix()
        if path.is_dir() and depth == 2 and not any(
                p.is_file() and is_image(p) for p in path.iterdir()):
            empty.append(fid + '/')
        elif path.is_file() and is_image(path):
            if depth == 3:
                rows.append((path.relative_to(folder).parts[0], fid))
            else:
                stray.append(fid)
    unparsable(stray, 'IDENTITY/TRACKLET/frame.jpg', skip)
    if empty:
        listed = ', '.join(empty[:5]) + (f' and {len(empty) - 5} more' if len(empty) > 5 else '')
        if not skip:
            raise common.InputError(f'{len(empty)} tracklet folders hold no frames: {listed} '
                                    '(pass --skip_unparsable to leave them out)')
        print(common.printable(f'skipped {len(empty)} empty tracklet folders: {listed}'),
              file=sys.stderr)
    return rows


def duke_video_split(root: Path, sub: str, skip: bool) -> list[tuple[str, str]]:
    """The frames of one DukeMTMC-VideoReID folder; the identity folder must be the name's."""
    rows, bad = [], []
    for pid, fid in list_tracklets(root, sub, skip):
        match = DUKE_VIDEO_PATTERN.match(fid.rsplit('/', 1)[-1])
        if match is None:
            bad.append(fid)
        elif match.group(1) != pid:
            raise common.InputError(f'{fid}: the folder is not the identity in the name')
        else:
            rows.append((pid, fid))
    unparsable(bad, '0001/0001/0001_C6_F0001_X30823.jpg', skip)
    return rows


def draw_test_identities(pids: list[str], args: argparse.Namespace,
                    rng: np.random.Generator) -> set[str]:
    """round(--test_fraction x identities) identities drawn for testing; both sides non-empty."""
    n_test = int(round(args.test_fraction * len(pids)))
    if not 1 <= n_test < len(pids):
        raise common.InputError(f'--test_fraction {args.test_fraction} of {len(pids)} identities '
                                f'leaves {n_test} for testing and {len(pids) - n_test} for '
                                'training; both need at least one')
    return {pids[i] for i in rng.permutation(len(pids))[:n_test]}


def split_tracklets(rows: list[tuple[str, str]], args: argparse.Namespace,
                    name: str) -> dict[str, list[tuple[str, str]]]:
    """Splits identities into train and test, then test tracklets into query and gallery:
    --query_per_id random tracklets of each test identity that has more than that many."""
    rng = np.random.default_rng(args.seed)
    test_pids = draw_test_identities(sorted({pid for pid, _ in rows}), args, rng)
    tracks = defaultdict(list)  # test identity -> its tracklet folders, sorted
    for pid, fid in rows:
        folder = fid.rsplit('/', 1)[0]
        if pid in test_pids and folder not in tracks[pid]:
            tracks[pid].append(folder)
    query = set()
    for pid in sorted(tracks):
        if len(tracks[pid]) > args.query_per_id:
            query.update(tracks[pid][i] for i in rng.permutation(len(tracks[pid]))[
                :args.query_per_id])
    in_query = [fid.rsplit('/', 1)[0] in query for _, fid in rows]
    return {f'{name}_train': [row for row in rows if row[0] not in test_pids],
            f'{name}_query': [row for row, q in zip(rows, in_query, strict=True) if q],
            f'{name}_test': [row for row, q in zip(rows, in_query, strict=True)
                             if row[0] in test_pids and not q]}


def split_folders(rows: list[tuple[str, str]], args: argparse.Namespace,
                  name: str) -> dict[str, list[tuple[str, str]]]:
    """Splits identities into train and test, then test images into query and gallery."""
    pids = sorted({pid for pid, _ in rows})
    rng = np.random.default_rng(args.seed)
    test_pids = draw_test_identities(pids, args, rng)
    by_pid = defaultdict(list)
    for pid, fid in rows:
        if pid in test_pids:
            by_pid[pid].append(fid)
    query = set()
    camera = re.compile(args.camera_regex) if args.camera_regex else None
    for pid in sorted(by_pid):
        fids = by_pid[pid]
        if camera:
            by_cam = defaultdict(list)
            for fid in fids:
                by_cam[camera.search(fid.rsplit('/', 1)[-1]).group(1)].append(fid)
            # A query needs its identity in the gallery from another camera to be answerable:
            # a camera gives its query only if every query so far keeps such a match.
            chosen = {}
            for cam in rng.permutation(sorted(by_cam)):
                fid = by_cam[cam][rng.integers(len(by_cam[cam]))]
                picked = set(chosen.values()) | {fid}
                left = {c for c, cam_fids in by_cam.items() if set(cam_fids) - picked}
                if all(left - {c} for c in [*chosen, cam]):
                    chosen[cam] = fid
            query.update(chosen.values())
        elif len(fids) > args.query_per_id:
            query.update(fids[i] for i in rng.permutation(len(fids))[:args.query_per_id])
    return {f'{name}_train': [row for row in rows if row[0] not in test_pids],
            f'{name}_query': [row for row in rows if row[1] in query],
            f'{name}_test': [row for row in rows if row[0] in test_pids and row[1] not in query]}


def read_folders(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(identity folder name, fid) of every image, sorted by path."""
    if not args.root.is_dir():
        raise common.InputError(f'{args.root} is not a folder')
    camera = None
    if args.camera_regex:
        try:
            camera = re.compile(args.camera_regex)
        except re.error as e:
            raise common.InputError(f'--camera_regex {args.camera_regex!r}: {e}') from None
        if camera.groups != 1:
            raise common.InputError(f'--camera_regex {args.camera_regex!r} needs exactly one group')
    rows, bad = [], []
    for path in sorted(args.root.rglob('*')):
        if not path.is_file() or not is_image(path):
            continue
        fid = path.relative_to(args.root).as_posix()
        if '/' not in fid or (camera and not camera.search(path.name)):
            bad.append(fid)
        else:
            rows.append((fid.split('/', 1)[0], fid))
    what = 'identity/image.jpg' + (f' with a camera matching {camera.pattern!r}' if camera else '')
    unparsable(bad, what, args.skip_unparsable)
    return sorted(rows, key=lambda row: row[1])


# ----------------------------------------------------------------------------- main
def main() -> None:
    args = parser.parse_args()
    root, skip = args.root, args.skip_unparsable
    if not root.is_dir():
        raise common.InputError(f'{root} is not a folder')

    if args.dataset == 'market1501':
        tables = market_like(root, 'market1501', MARKET_PATTERN, '0001_c1s1_000151_01.jpg', skip)
        tables.update(market_extras(root, args.distractors, tables['market1501_test'], skip))
    elif args.dataset == 'duke':
        tables = market_like(root, 'duke', DUKE_PATTERN, '0001_c2_f0046182.jpg', skip)
    elif args.dataset == 'cuhk03':
        variants = ('detected', 'labeled') if args.variant == 'both' else (args.variant,)
        present = [v for v in variants if (root / v).is_dir()]
        if args.variant == 'both' and not present:
            raise common.InputError(f'{root} has neither a detected/ nor a labeled/ folder: is it '
                                    'the cuhk03-np folder of the new protocol?')
        tables = {}
        for variant in present or variants:  # a missing requested variant fails in find_folder
            subset = market_like(root / variant, f'cuhk03_{variant}', CUHK03_PATTERN,
                                 '0001_c1_1.png', skip)
            tables.update({name: [(pid, f'{variant}/{fid}') for pid, fid in rows]
                           for name, rows in subset.items()})
    elif args.dataset == 'msmt17':
        train_dir = next((d for d in ('train', 'mask_train_v2') if (root / d).is_dir()), None)
        test_dir = next((d for d in ('test', 'mask_test_v2') if (root / d).is_dir()), None)
        if train_dir is None or test_dir is None:
            raise common.InputError(f'{root} lacks the train/ and test/ folders (V2: '
                                    'mask_train_v2/, mask_test_v2/) of MSMT17')
        for list_name in ('list_train.txt', 'list_val.txt', 'list_query.txt', 'list_gallery.txt'):
            if not (root / list_name).is_file():
                raise common.InputError(f'{root / list_name} is missing')
        train = read_msmt17_list(root, 'list_train.txt', train_dir, skip)
        val = read_msmt17_list(root, 'list_val.txt', train_dir, skip)
        tables = {'msmt17_train': train, 'msmt17_val': val, 'msmt17_trainval': train + val,
                  'msmt17_query': read_msmt17_list(root, 'list_query.txt', test_dir, skip),
                  'msmt17_test': read_msmt17_list(root, 'list_gallery.txt', test_dir, skip)}
    elif args.dataset == 'mars':
        what = '0001/0001C1T0001F001.jpg'
        tables = {'mars_train': parse_pids(list_images(root, 'bbox_train', True), MARS_PATTERN,
                                           what, skip)}
        if (root / 'info').is_dir():
            tables['mars_query'] = mars_query(root, skip)
        else:
            print(f'{root}/info is missing: mars_query.csv is not written', file=sys.stderr)
        # The official gallery is every test tracklet, the query ones included: the same-camera
        # rule of the evaluation removes a query's own tracklet.
        tables['mars_test'] = parse_pids(list_images(root, 'bbox_test', True), MARS_PATTERN,
                                         what, skip)
        for name in ('mars_train', 'mars_test'):
            wrong = [fid for pid, fid in tables[name] if fid.split('/')[1] != pid]
            if wrong:
                raise common.InputError(f'{wrong[0]}: the folder is not the identity in the name')
    elif args.dataset == 'duke_video':
        tables = {f'duke_video_{split}': duke_video_split(root, sub, skip)
                  for split, sub in (('train', 'train'), ('query', 'query'), ('test', 'gallery'))}
    elif args.dataset == 'tracklet_folders':
        if not 0 <= args.test_fraction < 1:
            raise common.InputError(f'--test_fraction {args.test_fraction} is not in [0, 1)')
        rows = list_tracklets(root, '', skip)
        name = args.name or root.resolve().name
        if not rows:
            raise common.InputError(f'{root} has no frames in IDENTITY/TRACKLET folders')
        tables = split_tracklets(rows, args, name) if args.test_fraction else {name: rows}
    else:
        if not 0 <= args.test_fraction < 1:
            raise common.InputError(f'--test_fraction {args.test_fraction} is not in [0, 1)')
        rows = read_folders(args)
        name = args.name or root.resolve().name
        if not rows:
            raise common.InputError(f'{root} has no images in identity folders')
        tables = split_folders(rows, args, name) if args.test_fraction else {name: rows}

    write_csvs(args.out, tables)


if __name__ == '__main__':
    common.run(main)
