"""search.py with a real export: query through the SavedModel, `search.py serve` end to end in
a subprocess on a free port of 127.0.0.1, and embed.py --shard parts equal to one unsharded run.

One tiny small_cnn experiment and export, one index and one server process serve the whole
module; the SIGTERM test stops that server and so runs last.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import common
import embed
import evaluate
import export
import gallery
import search
from conftest import ROOT, tf2_experiment, write_smooth_images

pytest.importorskip('fastapi', reason='search.py serve needs requirements-search.txt')
pytest.importorskip('uvicorn', reason='search.py serve needs requirements-search.txt')
pytestmark = pytest.mark.slow  # TensorFlow, an export and a server process: ~10 s together

FIDS = [f'cam{i % 2}/{i:02d}.' + ('png' if i % 3 == 0 else 'jpg') for i in range(8)]
PIDS = ['a', 'a', 'b', 'b', 'c', 'c']  # of the gallery, FIDS[:6]; FIDS[6:] are added
LIMITS = ['--max_images', '4', '--max_image_bytes', '20000', '--max_pixels', '250000']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Images, an experiment, its export (no ONNX: not needed here) and a gallery index of the
    first six images; then the server starts (it is waited for by `server`)."""
    folder = tmp_path_factory.mktemp('search')
    images = folder / 'images'
    write_smooth_images(images, FIDS, [(64 - 4 * i, 32 + i) for i in range(8)])
    lines = [f'{pid},{fid}\n' for pid, fid in zip(PIDS, FIDS[:6], strict=True)]
    (folder / 'gallery.csv').write_text(''.join(lines))
    root = folder / 'experiment'
    tf2_experiment(root, images, net='small_cnn', head='fc1024')
    patch = pytest.MonkeyPatch()
    patch.setattr(export, 'write_onnx', lambda *args: False)
    export.main(['--experiment_root', str(root), '--output', str(folder / 'export'), '--quiet'])
    patch.undo()
    # One image per batch, as the parts of test_shards_joined_equal_one_unsharded_run.
    embed.main(['--experiment_root', str(root), '--dataset', str(folder / 'gallery.csv'),
                '--image_root', str(images), '--filename', 'gallery.h5', '--quiet',
                '--batch_size', '1'])
    search.main(['index', '--embeddings', str(root / 'gallery.h5'), '--dataset',
                 str(folder / 'gallery.csv'), '--out', str(folder / 'index'), '--export',
                 str(folder / 'export'), '--image_root', str(images)])
    log = open(folder / 'server.log', 'w')
    process = subprocess.Popen(
        [sys.executable, str(ROOT / 'search.py'), 'serve', '--index', str(folder / 'index'),
         '--export', str(folder / 'export'), '--port', '0', *LIMITS],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', 'CUDA_VISIBLE_DEVICES': ''})
    yield {'folder': folder, 'images': images, 'root': root, 'process': process}
    if process.poll() is None:
        process.kill()
    process.wait()
    log.close()


@pytest.fixture(scope='module')
def server(setup):
    """(host, port) of the running server, once it listens."""
    line = setup['process'].stdout.readline()
    assert 'serving 6 gallery entries' in line, (setup['folder'] / 'server.log').read_text()
    host, port = line.strip().rsplit('//', 1)[1].split(':')
    return host, int(port)


def request(server, method: str, path: str, fields=None, files=None, body=None,
            headers=None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(*server, timeout=60)
    if files is not None or fields is not None:
        body, content_type = multipart(fields or {}, files or [])
        headers = {'Content-Type': content_type, **(headers or {})}
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    status, data = response.status, response.read()
    connection.close()
    return status, json.loads(data)


def multipart(fields, files):
    import service  # the client's half of the protocol; needs no server library
    return service.encode_multipart(fields, files)


def image_files(setup, indices) -> list[tuple[str, str, bytes]]:
    return [('images', FIDS[i].replace('/', '_'), (setup['images'] / FIDS[i]).read_bytes())
            for i in indices]


# ----------------------------------------------------------------------------- command line
def test_query_images_through_the_export(setup, tmp_path, capsys):
    folder = setup['folder']
    argv = ['query', '--index', folder / 'index', '--export', folder / 'export', '--top_k', '2',
            '--out', tmp_path / 'r.jsonl']
    search.main([str(a) for a in argv + ['--images', *(setup['images'] / f for f in FIDS[:2])]])
    records = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
    # A gallery image finds itself first (the same pixels through the same model).
    assert [r['results'][0]['path'] for r in records] == FIDS[:2]
    assert all(r['results'][0]['distance'] < 1e-3 for r in records)
    assert 'query 2/2' in capsys.readouterr().out
    # The same through --dataset (identities known: a report) and the gallery's embeddings.
    search.main([str(a) for a in argv + ['--dataset', folder / 'gallery.csv', '--image_root',
                                         setup['images'], '--quiet', '--report',
                                         tmp_path / 'report']])
    assert (tmp_path / 'report' / 'index.html').is_file()
    assert len(list((tmp_path / 'report' / 'queries').glob('*.png'))) == 6
    by_images = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
    search.main([str(a) for a in argv[:3] + argv[5:] + [
        '--query_embeddings', setup['root'] / 'gallery.h5', '--dataset', folder / 'gallery.csv',
        '--quiet']])
    by_embs = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
    assert [[e['path'] for e in r['results']] for r in by_images] == \
        [[e['path'] for e in r['results']] for r in by_embs]


# ----------------------------------------------------------------------------- the service
def test_search_and_health(setup, server):
    status, answer = request(server, 'POST', '/search', {'top_k': '3'},
                             image_files(setup, [2, 4]))
    assert status == 200, answer
    assert [len(one) for one in answer['results']] == [3, 3]
    assert [one[0]['path'] for one in answer['results']] == [FIDS[2], FIDS[4]]
    assert [one[0]['identity'] for one in answer['results']] == ['b', 'c']
    assert all(one[0]['distance'] < 1e-3 for one in answer['results'])
    distances = [e['distance'] for e in answer['results'][0]]
    assert distances == sorted(distances)
    assert request(server, 'GET', '/health') == (200, {'status': 'ok', 'size': 6})


def test_additions_are_searchable_and_counted(setup, server):
    status, answer = request(server, 'POST', '/gallery', {'identities': 'd, e'},
                             image_files(setup, [6, 7]))
    assert (status, answer) == (200, {'added': 2, 'size': 8})
    status, answer = request(server, 'POST', '/search', None, image_files(setup, [7]))
    assert answer['results'][0][0] == {'identity': 'e', 'path': FIDS[7].replace('/', '_'),
                                       'distance': answer['results'][0][0]['distance']}
    assert len(answer['results'][0]) == 8  # --top_k 10 by default, 8 entries exist
    status, stats = request(server, 'GET', '/stats')
    assert stats['gallery_size'] == 8 and stats['requests']['gallery_ok'] == 1
    assert stats['requests']['search_ok'] >= 2 and stats['additions_files'] == 1


def test_bad_uploads_get_a_4xx_with_one_line(setup, server):
    png = (setup['images'] / FIDS[0]).read_bytes()
    huge_png = png[:16] + (100_000).to_bytes(4, 'big') * 2 + png[24:]
    cases = [
        (400, 'is not a JPEG, PNG', {}, [('images', 'notes.txt', b'hello')]),
        (400, 'cannot decode image broken.jpg', {},
         [('images', 'broken.jpg', b'\xff\xd8\xff\xc0\x00\x11\x08\x00\x10\x00\x10' + b'x' * 50)]),
        (413, 'more than the limit of 20000', {},
         [('images', 'big.jpg', b'\xff\xd8' + b'0' * 20_000)]),
        (413, '100000x100000 pixels', {}, [('images', 'bomb.png', huge_png)]),
        (400, 'Too many files', {}, image_files(setup, [0, 1, 2, 3, 4])),
        (400, 'no files in the field "images"', {'top_k': '2'}, []),
        (422, "top_k '0' is not an integer", {'top_k': '0'}, image_files(setup, [0])),
        (422, 'one non-empty identity per image', {'identities': 'x'},
         image_files(setup, [0, 1])),
    ]
    for status, message, fields, files in cases:
        path = '/gallery' if 'identities' in fields else '/search'
        got, answer = request(server, 'POST', path, fields, files)
        assert got == status and message in answer['error'], (message, got, answer)
        assert '\n' not in answer['error']
    got, answer = request(server, 'POST', '/search', body=b'{}',
                          headers={'Content-Type': 'application/json'})
    assert got == 415 and 'multipart/form-data' in answer['error']
    assert request(server, 'GET', '/health')[0] == 200  # still serving


def test_sigterm_finishes_the_request_in_flight_and_keeps_additions(setup, server):
    """The body of a search is half sent when SIGTERM comes: it is answered, then the server
    exits 0; the index folder, loaded as a restarted server loads it, has the additions."""
    body, content_type = multipart({}, image_files(setup, [1]))
    head = (f'POST /search HTTP/1.1\r\nHost: {server[0]}\r\nContent-Type: {content_type}\r\n'
            f'Content-Length: {len(body)}\r\n\r\n').encode()
    with socket.create_connection(server, timeout=60) as connection:
        connection.sendall(head + body[:len(body) // 2])
        time.sleep(0.2)
        setup['process'].send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert setup['process'].poll() is None  # waiting for this request
        connection.sendall(body[len(body) // 2:])
        answer = b''
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b'HTTP/1.1 200'), answer[:200]
    assert json.loads(answer.split(b'\r\n\r\n', 1)[1])['results'][0][0]['path'] == FIDS[1]
    assert setup['process'].wait(timeout=30) == 0
    assert 'stopped by SIGTERM' in (setup['folder'] / 'server.log').read_text()
    restarted = gallery.Gallery(setup['folder'] / 'index')
    assert len(restarted) == 8 and restarted.pids[6:] == ['d', 'e']


# ----------------------------------------------------------------------------- parts
def test_shards_joined_equal_one_unsharded_run(setup, tmp_path, capsys):
    root, folder, images = setup['root'], setup['folder'], setup['images']
    dataset = folder / 'gallery.csv'
    for part in range(2):
        embed.main(['--experiment_root', str(root), '--dataset', str(dataset), '--image_root',
                    str(images), '--quiet', '--batch_size', '1', '--shard', f'{part}/2'])
    parts = [str(root / f'gallery_embeddings_part{i}of2.h5') for i in range(2)]
    whole = common.load_embeddings(root / 'gallery.h5')  # the setup's unsharded run
    # One image per batch in every run: each row computed alike, the same numbers.
    np.testing.assert_array_equal(common.load_embedding_parts(parts[::-1]), whole)
    assert common.read_part_info(parts[1])['part_rows'] == (3, 6)
    search.main(['join', '--parts', *parts, '--out', str(tmp_path / 'joined.h5')])
    for source in (parts, [str(tmp_path / 'joined.h5')]):
        search.main(['index', '--embeddings', *source, '--dataset', str(dataset), '--out',
                     str(tmp_path / 'index'), '--overwrite'])
        np.testing.assert_array_equal(np.load(tmp_path / 'index' / 'embeddings.npy'), whole)
    capsys.readouterr()
    results = []
    for gallery_embeddings in ([str(root / 'gallery.h5')], parts):
        patch = pytest.MonkeyPatch()
        patch.setattr(sys, 'argv', [
            'evaluate.py', '--excluder', 'diagonal', '--query_dataset', str(dataset),
            '--query_embeddings', str(root / 'gallery.h5'), '--gallery_dataset', str(dataset),
            '--gallery_embeddings', *gallery_embeddings])
        evaluate.main()
        patch.undo()
        results.append(capsys.readouterr().out)
    assert results[0] == results[1] and 'mAP' in results[0]
    with pytest.raises(common.InputError, match='rows 3-5 of 6 are missing'):
        common.load_embedding_parts(parts[:1])
