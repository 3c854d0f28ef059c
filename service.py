"""The HTTP service of `search.py serve`: FastAPI on uvicorn, over a gallery index and an export.

    POST /search   multipart/form-data: one or more files in the field `images`, optional
                   field `top_k` -> {"results": [[{"identity", "path", "distance"}, ...], ...]},
                   one list per image, nearest first
    POST /gallery  the same `images` and `identities` (comma-separated, one per image); each
                   new entry's path is its file name -> {"added": n, "size": N}. The entries
                   are on disk in the index folder (gallery.py's addition files) before the
                   answer leaves: a kill -9 afterwards loses nothing.
    GET  /health   -> {"status": "ok", "size": N}
    GET  /stats    -> gallery size, requests and failures per endpoint, latencies, uptime

A bad request gets a 4xx and {"error": "one line"}: not multipart (415), no Content-Length
(411), too large or too many files (413), not a JPEG/PNG/GIF/BMP or undecodable (400), bad
fields (422); 507 if the index folder cannot be written (then nothing is added). Embedding and
search run in worker threads, one BLAS thread each (TensorFlow and BLAS release the GIL);
SIGINT or SIGTERM stop accepting connections, finish the requests in flight, and exit 0.

fastapi, uvicorn and python-multipart are optional (requirements-search.txt): this module
imports them only in `serve`/`make_app`; `encode_multipart`, a client's half, needs nothing.
"""
import collections
import signal
import socket
import sys
import threading
import time
import uuid

import numpy as np

import common
import gallery

INSTALL_HINT = 'pip install -r requirements-search.txt'


class BadRequest(Exception):
    """A request the service refuses: HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Stats:
    """Counters of /stats, safe across threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.counts = collections.Counter()
        self.latencies = {name: collections.deque(maxlen=1000) for name in ('search', 'gallery')}

    def record(self, name: str, ok: bool, seconds: float) -> None:
        with self.lock:
            self.counts[f'{name}_{"ok" if ok else "refused"}'] += 1
            if ok and name in self.latencies:
                self.latencies[name].append(seconds)

    def as_dict(self, index: gallery.Gallery) -> dict:
        with self.lock:
            latency = {name: {'p50_ms': 1000 * float(np.percentile(list(values), 50)),
                              'p99_ms': 1000 * float(np.percentile(list(values), 99))}
                       for name, values in self.latencies.items() if values}
            return {'gallery_size': len(index), 'dim': index.dim, 'metric': index.metric,
                    'index': index.info['index'], 'additions_files': index.additions,
                    'uptime_s': time.time() - self.started, 'requests': dict(self.counts),
                    'latency_last_1000': latency}


def encode_multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]
                     ) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type, for clients (tests, the load test).

    Args:
        fields: name -> text value. files: (field name, file name, content).
    """
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f'{value}\r\n'.encode())
    for name, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + data + b'\r\n')
    parts.append(f'--{boundary}--\r\n'.encode())
    return b''.join(parts), f'multipart/form-data; boundary={boundary}'


def check_image(data: bytes, name: str, limits: dict) -> None:
    """Refuses a file that is too large, not an image, or one that decodes too large."""
    if len(data) > limits['max_image_bytes']:
        raise BadRequest(413, f'{name}: {len(data)} bytes, more than the limit of '
                              f'{limits["max_image_bytes"]} (--max_image_bytes)')
    size = common.image_size(data)
    if size is None:
        raise BadRequest(400, f'{name} is not a JPEG, PNG, GIF or BMP image')
    if size[0] * size[1] > limits['max_pixels'] or 0 in size:
        raise BadRequest(413 if size[0] * size[1] else 400,
                         f'{name}: {size[1]}x{size[0]} pixels; the limit is '
                         f'{limits["max_pixels"]} pixels (--max_pixels)')


async def read_images(request, limits: dict) -> tuple[list[bytes], list[str], dict]:
    """The checked files of the field `images`, their names, and the other fields."""
    from starlette.datastructures import UploadFile
    if not request.headers.get('content-type', '').startswith('multipart/form-data'):
        raise BadRequest(415, 'send multipart/form-data with the files in the field "images"')
    length = request.headers.get('content-length')
    if length is None or not length.isdigit():
        raise BadRequest(411, 'a Content-Length header is required')
    if int(length) > limits['max_images'] * (limits['max_image_bytes'] + 4096) + 65536:
        raise BadRequest(413, f'the request has {length} bytes, more than '
                              f'{limits["max_images"]} images of the size limit')
    form = await request.form(max_files=limits['max_images'], max_fields=16)
    files = form.getlist('images')
    if not files or not all(isinstance(f, UploadFile) for f in files):
        raise BadRequest(400, 'no files in the field "images"')
    datas, names = [], []
    for number, upload in enumerate(files):
        name = common.printable(upload.filename or f'image {number}')
        data = await upload.read()
        check_image(data, name, limits)
        datas.append(data)
        names.append(name)
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return datas, names, fields


def make_app(index: gallery.Gallery, embed_files, limits: dict):
    """The FastAPI application (see the module docstring).

    Args:
        index: the gallery. embed_files: export.load_embedder's function.
        limits: max_images, max_image_bytes, max_pixels, top_k (default), max_top_k.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    app = FastAPI(title='triplet-reid search', docs_url=None, redoc_url=None)
    stats = Stats()

    @app.exception_handler(BadRequest)
    async def refused(request: Request, error: BadRequest):
        stats.record(request.url.path.strip('/'), False, 0.0)
        return JSONResponse({'error': str(error)}, status_code=error.status)

    @app.exception_handler(HTTPException)  # starlette's own: a malformed multipart body, 404
    async def http_error(request: Request, error: HTTPException):
        stats.record(request.url.path.strip('/'), False, 0.0)
        return JSONResponse({'error': common.printable(str(error.detail))},
                            status_code=error.status_code)

    async def embed(datas: list[bytes], names: list[str]) -> np.ndarray:
        try:
            return await run_in_threadpool(embed_files, datas, names)
        except common.InputError as e:
            raise BadRequest(400, str(e)) from None

    @app.post('/search')
    async def search(request: Request):
        start = time.perf_counter()
        datas, names, fields = await read_images(request, limits)
        top_k = parse_top_k(fields.get('top_k'), limits)
        hits = await run_in_threadpool(index.search, await embed(datas, names), top_k)
        results = [[{'identity': index.pids[row], 'path': index.fids[row], 'distance': dist}
                    for row, dist in one] for one in hits]
        stats.record('search', True, time.perf_counter() - start)
        return {'results': results}

    @app.post('/gallery')
    async def add(request: Request):
        start = time.perf_counter()
        datas, names, fields = await read_images(request, limits)
        identities = [pid.strip() for pid in fields.get('identities', '').split(',')]
        if len(identities) != len(datas) or not all(identities):
            raise BadRequest(422, f'"identities" must give one non-empty identity per image, '
                                  f'comma-separated: {len(datas)} images, '
                                  f'{len([p for p in identities if p])} identities')
        embs = await embed(datas, names)
        try:
            await run_in_threadpool(index.add, embs, identities, names)
        except common.InputError as e:  # the folder cannot be written: nothing was added
            raise BadRequest(507, str(e)) from None
        stats.record('gallery', True, time.perf_counter() - start)
        return {'added': len(datas), 'size': len(index)}

    @app.get('/health')
    async def health():
        return {'status': 'ok', 'size': len(index)}

    @app.get('/stats')
    async def get_stats():
        return stats.as_dict(index)

    return app


def parse_top_k(value: str | None, limits: dict) -> int:
    if value is None:
        return limits['top_k']
    if not value.strip().isdigit() or not 1 <= int(value) <= limits['max_top_k']:
        raise BadRequest(422, f'top_k {value!r} is not an integer from 1 to '
                              f'{limits["max_top_k"]} (--max_top_k)')
    return int(value)


def find_module(name: str) -> bool:
    """Whether a module can be imported (False also where sys.modules blocks it with None)."""
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None
        return False


def serve(args) -> None:
    """search.py serve: loads the index and the export, listens, and serves until SIGINT or
    SIGTERM, then finishes the requests in flight and returns."""
    # python-multipart (the form parser) is the module python_multipart, `multipart` before 0.0.13.
    missing = [name for name, modules in (('fastapi', ['fastapi']), ('uvicorn', ['uvicorn']),
                                          ('python-multipart', ['python_multipart', 'multipart']))
               if not any(find_module(module) for module in modules)]
    if missing:
        raise common.InputError(f'search.py serve needs {", ".join(missing)} ({INSTALL_HINT}); '
                                'index and query work without it')
    import uvicorn
    import export
    index = gallery.Gallery(args.index)
    gallery.check_export(index, export.read_signature(args.export), args.export)
    embed_files = export.load_embedder(args.export)
    limits = {key: getattr(args, key) for key in ('max_images', 'max_image_bytes', 'max_pixels',
                                                   'top_k', 'max_top_k')}
    # Concurrency comes from the requests, one thread each: a BLAS or OpenMP call that fanned
    # out over the cores as well would contend with the other requests' threads (OpenBLAS's
    # waiting threads spin), and TensorFlow's. Measured with benchmarks/serve_load.py.
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    app = make_app(index, embed_files, limits)
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as e:
        raise common.InputError(f'cannot listen on {args.host}:{args.port}: '
                                f'{e.strerror or e}') from None
    host, port = sock.getsockname()[:2]
    stopped_by = []
    # uvicorn catches SIGINT and SIGTERM, shuts down gracefully, then raises the signal again
    # for the handler found before it: this one records it, so that the process exits 0.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda number, frame: stopped_by.append(number))
    print(f'serving {len(index)} gallery entries ({index.metric}, {index.info["index"]}) on '
          f'http://{host}:{port}', flush=True)
    config = uvicorn.Config(app, log_level='warning', access_log=False,
                            timeout_graceful_shutdown=60)
    uvicorn.Server(config).run(sockets=[sock])
    names = ', '.join(signal.Signals(n).name for n in stopped_by) or 'the server'
    print(f'stopped by {names}: {len(index)} gallery entries in {args.index}', file=sys.stderr,
          flush=True)
