"""report.py: the results page of evaluate.py --report, seen in a real browser, and embed.py's
TensorBoard projector files, loaded back."""
import json
import re
import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest
from conftest import ROOT

import report

COLOURS_BGR = {kind: tuple(int(c[i:i + 2], 16) for i in (5, 3, 1))
               for kind, c in report.COLOURS.items()}


# ----------------------------------------------------------------------------- units
def test_choose_queries():
    aps = [0.5, None, 0.1, 0.9, 0.3, 1.0, 0.2, 0.7, 0.05, 0.6]
    worst = report.choose_queries(aps, 5, 'worst')
    assert worst[:4] == [8, 2, 6, 4] and worst[4] == 5  # 4 worst, then the best for contrast
    assert report.choose_queries(aps, 3, 'best') == [5, 3, 7]
    random = report.choose_queries(aps, 4, 'random')
    assert len(set(random)) == 4 and 1 not in random  # no query without a match
    assert report.choose_queries(aps, 100, 'worst') == sorted(
        [i for i, ap in enumerate(aps) if ap is not None], key=lambda i: aps[i])[:-1] + [5]


def test_ranked_row_counts_only_entries_that_count():
    dists = np.array([0.5, 0.1, 0.3, 0.3, 0.9, 0.2])
    ignored = np.array([False, True, False, False, False, False])
    matches = np.array([False, False, False, True, True, False])
    row = report.ranked_row(dists, ignored, matches, top_k=4)
    # Order: 1 (ignored), 5, 2, 3 (ties in gallery order), 0, 4.
    assert row['entries'] == [(1, None, 'ignored'), (5, 1, 'wrong'), (2, 2, 'wrong'),
                              (3, 3, 'match')]
    assert row['first_match'] == 3
    assert report.ranked_row(dists, ignored, matches & (dists > 0.6), 2)['first_match'] == 5


def test_sprite_layout_fits_tensorboard():
    assert report.sprite_layout(10) == (10, 4, 64)
    assert report.sprite_layout(128 ** 2) == (128 ** 2, 128, 64)
    assert report.sprite_layout(128 ** 2 + 1)[2] == 32  # smaller thumbnails first
    shown, per_row, height = report.sprite_layout(10 ** 6)
    assert per_row * height <= report.SPRITE_LIMIT and shown == per_row ** 2 < 10 ** 6


# ----------------------------------------------------------------------------- the page
def person(colour_top, colour_bottom, rng) -> np.ndarray:
    image = np.empty((128, 64, 3))
    image[:64], image[64:] = colour_top, colour_bottom
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
    """A Market-style tree, embeddings that put some matches far down, evaluate.py --report."""
    tmp = tmp_path_factory.mktemp('report')
    rng = np.random.default_rng(0)
    rows = {'query': [], 'test': []}
    embs = {'query': [], 'test': []}
    for pid in range(1, 9):
        centre = rng.normal(size=16)
        # Identities 1-3 are hard: their gallery images embed far from the query.
        spread = 3.0 if pid <= 3 else 0.3
        for split, cams in (('query', [1]), ('test', [1, 2, 3, 4])):
            for cam in cams:
                fid = f'{split}/{pid:04d}_c{cam}s1_{pid * 10 + cam:06d}_00.jpg'
                rows[split].append((f'{pid:04d}', fid))
                embs[split].append(centre + rng.normal(0, spread if split == 'test' else 0.1,
                                                       16))
    rows['test'].append(('-1', 'test/-1_c2s1_000999_00.jpg'))  # junk: ignored for every query
    embs['test'].append(embs['query'][0] + 0.01)
    for split in rows:
        for pid, fid in rows[split]:
            path = tmp / 'images' / fid
            path.parent.mkdir(parents=True, exist_ok=True)
            # Blue tops and yellow trousers (BGR): far from the frames' green, red and grey.
            cv2.imwrite(str(path), person((200, 150, int(pid) * 30), (50, 200, 230), rng))
        (tmp / f'{split}.csv').write_text(''.join(f'{p},{f}\n' for p, f in rows[split]))
        with h5py.File(tmp / f'{split}.h5', 'w') as f:
            f['emb'] = np.array(embs[split], np.float32)
    (tmp / 'images' / rows['test'][5][1]).unlink()  # a missing picture: a placeholder
    # The embeddings live in an experiment root whose args.json names the image root.
    for name in ('query.h5', 'test.h5'):
        (tmp / 'exp').mkdir(exist_ok=True)
        shutil.move(tmp / name, tmp / 'exp' / name)
    (tmp / 'exp' / 'args.json').write_text(json.dumps({'image_root': str(tmp / 'images')}))
    done = subprocess.run(
        [sys.executable, str(ROOT / 'evaluate.py'), '--excluder', 'market1501',
         '--query_dataset', tmp / 'query.csv', '--query_embeddings', tmp / 'exp' / 'query.h5',
         '--gallery_dataset', tmp / 'test.csv', '--gallery_embeddings', tmp / 'exp' / 'test.h5',
         '--filename', tmp / 'result.json', '--report', tmp / 'page', '--report_queries', '5',
         '--top_k', '6'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tmp, done


def test_every_picture_decodes_with_its_size(evaluated):
    tmp, _ = evaluated
    page = tmp / 'page'
    assert cv2.imread(str(page / 'cmc.png')).shape == (320, 500, 3)
    assert cv2.imread(str(page / 'ap_histogram.png')).shape == (320, 500, 3)
    queries = sorted((page / 'queries').glob('*.png'))
    assert len(queries) == 5
    for path in queries:
        image = cv2.imread(str(path))
        assert image.shape == (230, int(0.95 * 7 * 100), 3), path  # query + top 6
        assert image.std() > 10  # not blank


def test_page_links_only_relative_files_and_escapes_names(evaluated):
    tmp, done = evaluated
    text = (tmp / 'page' / 'index.html').read_text()
    sources = re.findall(r'src="([^"]+)"', text)
    assert len(sources) == 2 + 5
    for src in sources:
        assert not src.startswith('/') and ':' not in src and (tmp / 'page' / src).is_file()
    result = json.loads((tmp / 'result.json').read_text())
    assert f"{result['mAP']:.2%}" in text and 'market1501' in text
    assert str(tmp / 'page' / 'index.html') in done.stderr


def test_names_are_escaped():
    fids = np.array(['q/<script>alert(1)</script>.jpg'])
    page = report.render_html({'mAP': 0.5, 'mINP': 0.5, 'CMC': [0.5, 1.0], 'aps': [0.5]},
                              {'fids': fids, 'pids': np.array(['<b>7</b>'])},
                              {'images': '<img src=x>'}, [(0, {'first_match': 1}, 'q.png')],
                              'worst', 10)
    assert '<script>' not in page and '<b>7' not in page and '<img src=x>' not in page
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in page


def test_worst_queries_first(evaluated):
    tmp, _ = evaluated
    text = (tmp / 'page' / 'index.html').read_text()
    aps = [float(ap) for ap in re.findall(r'AP ([\d.]+)%', text)]
    assert aps[:4] == sorted(aps[:4]) and aps[4] >= aps[3]
    assert 'first match at rank' in text  # a hard query's first match beyond the top 6


def chromium() -> str | None:
    return shutil.which('chromium') or shutil.which('chromium-browser')


def test_page_in_a_real_browser(evaluated):
    tmp, _ = evaluated
    if chromium() is None:
        pytest.skip('no chromium on this machine (.ci/run installs Debian\'s chromium)')
    shot = tmp / 'screenshot.png'
    done = subprocess.run([chromium(), '--headless', '--no-sandbox', '--disable-gpu',
                           '--hide-scrollbars', '--window-size=1000,2600',
                           f'--screenshot={shot}', (tmp / 'page' / 'index.html').as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = cv2.imread(str(shot)).astype(int)
    assert pixels.shape[:2] == (2600, 1000)
    assert (np.abs(pixels - 255).sum(-1) > 60).mean() > 0.1  # far from a blank white page

    def count(kind):
        return int((np.abs(pixels - COLOURS_BGR[kind]).sum(-1) < 40).sum())
    # A frame is a 5-point (7 px) line around a picture of about 75x150 px: some 3,000 pixels of
    # its colour. Only frames have that many: the legend colours a few words, the people are
    # blue and yellow.
    assert count('match') > 1500 and count('wrong') > 1500 and count('ignored') > 1500


# ----------------------------------------------------------------------------- projector
def test_projector_files_load_back(tmp_path):
    rng = np.random.default_rng(1)
    names = [f'{pid:04d}_c{cam}s1_000{pid}{cam}_00.jpg' for pid in (1, 2, 3) for cam in (1, 2)]
    for name in names[:-1]:  # the last image is missing: an empty thumbnail, no crash
        cv2.imwrite(str(tmp_path / name), person((10, 200, 30), (200, 0, 0), rng))
    embs = rng.normal(size=(len(names), 5)).astype(np.float32)
    pids = np.array([n[:4] for n in names])
    count = report.write_projector(tmp_path / 'proj', embs, pids, np.array(names),
                                   [str(tmp_path / n) for n in names])
    assert count == len(names)
    tensors = np.loadtxt(tmp_path / 'proj' / 'tensors.tsv', delimiter='\t')
    np.testing.assert_array_equal(tensors.astype(np.float32), embs)  # 9 digits: exact
    lines = (tmp_path / 'proj' / 'metadata.tsv').read_text().splitlines()
    assert lines[0] == 'identity\tcamera\tfile' and len(lines) == 1 + len(names)
    assert lines[1].split('\t') == ['0001', '1', names[0]]
    sprite = cv2.imread(str(tmp_path / 'proj' / 'sprite.png'))
    assert sprite.shape == (3 * 64, 3 * 32, 3)  # 6 thumbnails of 32x64 on a 3 x 3 grid
    config = (tmp_path / 'proj' / 'projector_config.pbtxt').read_text()
    projector = pytest.importorskip('tensorboard.plugins.projector.projector_config_pb2',
                                    reason='tensorboard is not installed')
    from google.protobuf import text_format
    parsed = text_format.Parse(config, projector.ProjectorConfig())
    embedding = parsed.embeddings[0]
    assert embedding.tensor_path == 'tensors.tsv' and embedding.metadata_path == 'metadata.tsv'
    assert list(embedding.sprite.single_image_dim) == [32, 64]


def test_page_shows_the_distances_actually_used(evaluated, monkeypatch):
    # With --rerank the page must rank by the re-ranked distances, which lie in [0, 1] (a
    # Jaccard distance and a column-normalised distance, mixed), unlike the euclidean ones here.
    import evaluate
    tmp, _ = evaluated
    seen = {}

    def capture(folder, result, query, gallery, distance_rows, *args, **kwargs):
        seen['dists'] = distance_rows(np.arange(len(query['fids'])))
        seen['options'] = args[1]
    monkeypatch.setattr(report, 'write_report', capture)
    monkeypatch.setattr(sys, 'argv', [
        'evaluate.py', '--excluder', 'market1501', '--query_dataset', str(tmp / 'query.csv'),
        '--query_embeddings', str(tmp / 'exp' / 'query.h5'), '--gallery_dataset',
        str(tmp / 'test.csv'), '--gallery_embeddings', str(tmp / 'exp' / 'test.h5'),
        '--rerank', '--k1', '4', '--k2', '2', '--report', str(tmp / 'reranked')])
    evaluate.main()
    finite = seen['dists'][np.isfinite(seen['dists'])]
    assert finite.size and finite.min() >= 0 and finite.max() <= 1
    assert 're-ranking k1=4 k2=2' in seen['options']['options']


def test_untrusted_names_show_as_text(tmp_path, monkeypatch):
    """File names and identities with HTML, and a `$` (matplotlib's formulas), through
    evaluate.py --report: the page holds none of their markup, and shows each name as text."""
    import csv
    from html.parser import HTMLParser

    import evaluate
    rng = np.random.default_rng(5)
    pids = ['<script>alert("id")</script>', '$\\frac$ & co', 'plain']
    fids = [f'{folder}/{name}.png' for folder, name in (
        ('q', 'x<script>alert(1)'), ('q', '<img src=x onerror=alert(2)>'), ('q', 'a$b'),
        ('g', 'y<script>'), ('g', '<b>bold</b'), ('g', 'plain'))]
    names = [(pids[i % 3], fid) for i, fid in enumerate(fids)]
    with open(tmp_path / 'all.csv', 'w', newline='') as f:
        csv.writer(f).writerows(names)
    for _, fid in names[:-1]:  # the last one missing: its name is drawn in the placeholder
        (tmp_path / fid).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / fid), person((200, 150, 30), (50, 200, 230), rng))
    with h5py.File(tmp_path / 'all.h5', 'w') as f:
        f['emb'] = rng.normal(size=(len(names), 4)).astype(np.float32)
    monkeypatch.setattr(sys, 'argv', [
        'evaluate.py', '--excluder', 'diagonal', '--query_dataset', str(tmp_path / 'all.csv'),
        '--query_embeddings', str(tmp_path / 'all.h5'), '--gallery_dataset',
        str(tmp_path / 'all.csv'), '--gallery_embeddings', str(tmp_path / 'all.h5'),
        '--report', str(tmp_path / 'page'), '--report_queries', '6', '--image_root',
        str(tmp_path)])
    evaluate.main()
    page = (tmp_path / 'page' / 'index.html').read_text()
    assert '<script' not in page and '<img src=x' not in page and '<b>bold' not in page

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.text, self.tags = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

        def handle_data(self, data):
            self.text.append(data)
    parsed = Text()
    parsed.feed(page)
    text = ''.join(parsed.text)
    for pid, fid in names:
        assert f'query {fid} (id {pid})' in text
    assert set(parsed.tags) <= {'html', 'head', 'meta', 'title', 'style', 'body', 'h1', 'h2',
                                'table', 'tr', 'td', 'b', 'br', 'p', 'ul', 'li', 'div', 'img',
                                'span'}
    assert len(list((tmp_path / 'page' / 'queries').glob('*.png'))) == 6
