#!/usr/bin/env python3
"""Finds people in a gallery: "where else did the cameras see this person?".

    python search.py index --embeddings exp/test.h5 --dataset data/market1501_test.csv --out idx
    python search.py query --index idx --export exp/export --images a.jpg b.png --top_k 10
    python search.py query --index idx --query_embeddings exp/query.h5 --out results.jsonl
    python search.py calibrate --embeddings exp/query.h5 --dataset data/market1501_query.csv
    python search.py serve --index idx --export exp/export --port 8080
    python search.py join --parts test_embeddings_part0of2.h5 test_embeddings_part1of2.h5 \\
        --out test_embeddings.h5

`index` builds a gallery index folder (gallery.py says what it holds) from embed.py's HDF5
files, with the settings of the experiment (args.json beside the embeddings) or of an export
(--export), so that queries are embedded and compared the same way. `query` embeds images
through an export's SavedModel (no training code) or takes embeddings, and prints the nearest
gallery entries. `serve` answers the same over HTTP (service.py). Run `search.py CMD --help`.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

import common
import experiment
import gallery
import loss

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

index_parser = commands.add_parser('index', help='Build a gallery index folder, or --add to one.')
index_parser.add_argument('--embeddings', required=True, nargs='+', metavar='H5',
                          help='embed.py\'s HDF5 file of the gallery, or its --shard parts.')
index_parser.add_argument('--dataset', required=True,
                          help='CSV of the gallery (identity,path); row i is embedding i.')
index_parser.add_argument('--image_root', default=None,
                          help='Folder the paths are relative to (recorded for --report).\n'
                               'Default: the experiment\'s args.json, else none.')
index_parser.add_argument('--out', required=True, metavar='INDEX',
                          help='The index folder to write (with --add: to add to).')
index_parser.add_argument('--index', default='exact', choices=('exact', 'faiss'),
                          help='exact: blocked BLAS, the ranking of evaluate.py (default);\n'
                               'faiss: approximate (HNSW, or IVF beyond 200,000 entries).')
index_parser.add_argument('--metric', default=None, choices=loss.METRICS,
                          help='Distance. Default: the experiment\'s (args.json or the\n'
                               'export\'s signature.json), else euclidean.')
index_parser.add_argument('--export', default=None,
                          help='Take the embedding\'s settings from this export\'s signature.json.')
index_parser.add_argument('--add', action='store_true',
                          help='Append these entries to the index --out without rebuilding it.')
index_parser.add_argument('--overwrite', action='store_true',
                          help='Replace a non-empty --out (once the new index is complete).')

query_parser = commands.add_parser('query', help='Find the nearest gallery entries of queries.')
query_parser.add_argument('--index', required=True, help='Gallery index folder.')
query_parser.add_argument('--export', default=None,
                          help='Export folder whose SavedModel embeds --images / --dataset.')
query_parser.add_argument('--images', nargs='+', default=None, help='Query image files.')
query_parser.add_argument('--dataset', default=None,
                          help='CSV of query images (identity,path); with --query_embeddings\n'
                               'it only names the queries.')
query_parser.add_argument('--image_root', default='.',
                          help='Folder the paths of --dataset are relative to (default: .).')
query_parser.add_argument('--query_embeddings', nargs='+', default=None, metavar='H5',
                          help='Embeddings of the queries instead of images (or their parts).')
query_parser.add_argument('--top_k', type=common.positive_int, default=10,
                          help='Gallery entries per query (default 10).')
query_parser.add_argument('--max_distance', type=common.positive_float, default=None,
                          metavar='D', help='Mark entries beyond D; say "no match" when none is\n'
                                            'within it (search.py calibrate suggests D).')
query_parser.add_argument('--out', default=None, metavar='JSONL',
                          help='Also write one JSON object per query to this file.')
query_parser.add_argument('--report', default=None, metavar='DIR',
                          help='Draw each query\'s ranked list into DIR (index.html + pictures).')
query_parser.add_argument('--batch_size', type=common.positive_int, default=64,
                          help='Queries embedded and searched at once (default 64).')
query_parser.add_argument('--quiet', action='store_true',
                          help='Do not print the results (with --out or --report).')

calibrate_parser = commands.add_parser(
    'calibrate', help='Suggest --max_distance from a labelled set (e.g. the query set).')
calibrate_parser.add_argument('--embeddings', required=True, nargs='+', metavar='H5')
calibrate_parser.add_argument('--dataset', required=True, help='CSV of the labelled set.')
calibrate_parser.add_argument('--metric', default=None, choices=loss.METRICS,
                              help='Default: args.json\'s beside the embeddings, else euclidean.')
calibrate_parser.add_argument('--false_match_rate', type=common.positive_float, default=0.01,
                              help='Fraction of different-identity pairs allowed within the\n'
                                   'distance (default 0.01).')
calibrate_parser.add_argument('--anchors', type=common.positive_int, default=2000,
                              help='Rows compared with all others (default 2000; all if fewer).')
calibrate_parser.add_argument('--ignore_identities', nargs='+', default=[], metavar='ID',
                              help='Rows of these identities take no part, e.g. Market-1501\'s\n'
                                   'junk and distractors: -1 0000.')

serve_parser = commands.add_parser('serve', help='Answer searches and additions over HTTP.')
serve_parser.add_argument('--index', required=True, help='Gallery index folder.')
serve_parser.add_argument('--export', required=True, help='Export folder that embeds uploads.')
serve_parser.add_argument('--host', default='127.0.0.1',
                          help='Address to listen on (default 127.0.0.1: this machine only).')
serve_parser.add_argument('--port', type=common.int_at_least(0), default=8080,
                          help='Port (default 8080; 0: a free one, printed).')
serve_parser.add_argument('--top_k', type=common.positive_int, default=10,
                          help='Entries per image when a request gives no top_k (default 10).')
serve_parser.add_argument('--max_top_k', type=common.positive_int, default=1000,
                          help='Largest top_k a request may ask for (default 1000).')
serve_parser.add_argument('--max_images', type=common.positive_int, default=64,
                          help='Images per request at most (default 64).')
serve_parser.add_argument('--max_image_bytes', type=common.positive_int, default=10 * 2**20,
                          help='Bytes per image file at most (default 10 MiB).')
serve_parser.add_argument('--max_pixels', type=common.positive_int, default=4096 * 4096,
                          help='Height x width per image at most (default 4096 x 4096).')

join_parser = commands.add_parser(
    'join', help='Join embed.py --shard parts into one HDF5 file without copying them.')
join_parser.add_argument('--parts', required=True, nargs='+', metavar='H5')
join_parser.add_argument('--out', required=True, help='The HDF5 file to write.')
for command_parser in commands.choices.values():  # keep the help strings' line breaks
    command_parser.formatter_class = argparse.RawTextHelpFormatter


# ----------------------------------------------------------------------------- index
def embedding_settings(embeddings: str, export: str | None, metric: str | None) -> dict:
    """The settings an index records: metric, model, input size, and where they came from."""
    import export as export_module
    trained, source = {}, None
    if export:
        signature = export_module.read_signature(export)
        trained = {**(signature.get('training_args') or {}),
                   **{key: signature.get(key) for key in ('model_name', 'head_name',
                                                          'embedding_dim')}}
        trained['net_input_height'], trained['net_input_width'] = signature['net_input_size']
        source = str(Path(export) / 'signature.json')
    elif (Path(embeddings).parent / experiment.ARGS_FILE).is_file():
        source = str(Path(embeddings).parent / experiment.ARGS_FILE)
        trained = experiment.read_args(Path(source))
    stored_metric = trained.get('metric')
    if metric and stored_metric and metric != stored_metric:
        print(f'warning: --metric {metric}, but {source} trained with {stored_metric}',
              file=sys.stderr)
    head = trained.get('head_name')
    return {'metric': metric or stored_metric or 'euclidean', 'settings_from': source,
            'model_name': trained.get('model_name'), 'head_name': head,
            'embedding_dim': trained.get('embedding_dim'),
            'net_input_size': [trained.get('net_input_height'), trained.get('net_input_width')],
            'normalised': head.endswith('_normalize') if isinstance(head, str) else None,
            'image_root': trained.get('image_root')}


def load_labelled(h5_files: list[str], csv_file: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings (N, D) with the identities and paths of their CSV, checked to match."""
    pids, fids = common.load_dataset(csv_file)
    embs = common.load_embedding_parts(h5_files)
    if len(embs) != len(fids):
        raise common.InputError(f'{csv_file} has {len(fids)} rows but the embeddings have '
                                f'{len(embs)} ({" ".join(h5_files)}): were they computed from '
                                'another CSV?')
    return embs, pids, fids


def run_index(args: argparse.Namespace) -> None:
    embs, pids, fids = load_labelled(args.embeddings, args.dataset)
    if args.add:
        if args.overwrite or args.metric or args.export or args.index != 'exact':
            raise common.InputError('--add appends to an existing index with its settings: '
                                    '--overwrite, --metric, --export and --index do not apply')
        index = gallery.Gallery(args.out)
        index.add(embs, pids.tolist(), fids.tolist())
        print(f'added {len(embs)} entries to {args.out}: {len(index)} in all')
        return
    settings = embedding_settings(args.embeddings[0], args.export, args.metric)
    if settings['embedding_dim'] not in (None, embs.shape[1]):
        raise common.InputError(f'{settings["settings_from"]} gives {settings["embedding_dim"]}'
                                f'-D embeddings, but {args.embeddings[0]} holds '
                                f'{embs.shape[1]}-D ones')
    settings.update(embeddings=args.embeddings, dataset=args.dataset)
    if args.image_root:
        settings['image_root'] = args.image_root
    info = gallery.write_index(args.out, embs, pids, fids, settings, args.index, args.overwrite)
    detail = f' {json.dumps(info["faiss"])}' if 'faiss' in info else ''
    print(f'indexed {len(embs)} {embs.shape[1]}-D embeddings ({info["metric"]}, '
          f'{args.index}{detail}) into {args.out}')


# ----------------------------------------------------------------------------- query
def check_query_args(args: argparse.Namespace) -> None:
    """One source of queries: images through an export, or embeddings."""
    if args.query_embeddings:
        if args.export or args.images:
            raise common.InputError('--query_embeddings replaces --export with --images: give '
                                    'one or the other')
    elif not args.export:
        raise common.InputError('give --export EXPORT with --images or --dataset, or '
                                '--query_embeddings')
    elif bool(args.images) == bool(args.dataset):
        raise common.InputError('--export embeds either --images or --dataset: give one')
    if args.quiet and not (args.out or args.report):
        raise common.InputError('--quiet prints nothing: add --out or --report')


def query_inputs(args: argparse.Namespace, index: gallery.Gallery) -> tuple:
    """(names (Q,), pids (Q,) or None, embeddings function of a slice or None, embs or None)."""
    pids = None
    if args.query_embeddings:
        if args.dataset:
            embs, pids, names = load_labelled(args.query_embeddings, args.dataset)
        else:
            embs = common.load_embedding_parts(args.query_embeddings)
            names = np.array([f'row {i}' for i in range(len(embs))])
        if embs.shape[1] != index.dim:
            raise common.InputError(f'query embeddings are {embs.shape[1]}-D, the index '
                                    f'{index.folder} holds {index.dim}-D ones')
        return names, pids, lambda batch: embs[batch]
    import export as export_module
    gallery.check_export(index, export_module.read_signature(args.export), args.export)
    if args.images:
        names = np.array(args.images)
        paths = list(args.images)
    else:
        pids, names = common.load_dataset(args.dataset, args.image_root, check_files=True)
        paths = [os.path.join(args.image_root, name) for name in names]
    missing = [path for path in paths if not common.is_file(Path(path))]
    if missing:
        raise common.InputError(f'{len(missing)} query images are missing, e.g. {missing[0]}')
    embed_files = export_module.load_embedder(args.export)

    def embed_batch(batch: slice) -> np.ndarray:
        datas = []
        for path in paths[batch]:
            try:
                datas.append(Path(path).read_bytes())
            except OSError as e:
                raise common.InputError(f'cannot read {path}: {e.strerror or e}') from None
        return embed_files(datas, paths[batch])
    return names, pids, embed_batch


def result_record(name: str, hits: list, index: gallery.Gallery,
                  max_distance: float | None) -> dict:
    """The JSON object of one query (see --out)."""
    results = []
    for row, dist in hits:
        entry = {'identity': index.pids[row], 'path': index.fids[row], 'distance': dist}
        if max_distance is not None:
            entry['beyond_max_distance'] = dist > max_distance
        results.append(entry)
    record = {'query': str(name), 'results': results}
    if max_distance is not None:
        record['match'] = any(dist <= max_distance for _, dist in hits)
    return record


def print_record(number: int, count: int, record: dict, max_distance: float | None) -> None:
    lines = [f'query {number}/{count}: {record["query"]}']
    for rank, entry in enumerate(record['results'], start=1):
        beyond = '  beyond --max_distance' if entry.get('beyond_max_distance') else ''
        lines.append(f'  {rank:4d}  {entry["distance"]:10.4f}  {entry["identity"]}  '
                     f'{entry["path"]}{beyond}')
    if max_distance is not None and not record['match']:
        lines.append(f'  no match within {max_distance:g}')
    print('\n'.join(common.printable(line) for line in lines))


def run_query(args: argparse.Namespace) -> None:
    check_query_args(args)
    index = gallery.Gallery(args.index)
    names, pids, embed_batch = query_inputs(args, index)
    if args.out:
        common.probe_writable(args.out)
    records, all_hits = [], []
    for start in range(0, len(names), args.batch_size):
        batch = slice(start, start + args.batch_size)
        hits = index.search(embed_batch(batch), args.top_k)
        for name, one in zip(names[batch], hits, strict=True):
            record = result_record(name, one, index, args.max_distance)
            if not args.quiet:
                print_record(len(records) + 1, len(names), record, args.max_distance)
            records.append(record)
            all_hits.append(one)
    if args.out:
        with common.atomic_write(args.out) as tmp, open(tmp, 'w', encoding='utf-8') as f:
            f.writelines(json.dumps(record) + '\n' for record in records)
    if args.report:
        write_query_report(args, index, names, pids, all_hits)


def write_query_report(args: argparse.Namespace, index: gallery.Gallery, names: np.ndarray,
                       pids: np.ndarray | None, hits: list) -> None:
    """--report: evaluate.py's ranked-list pictures of each query (report.py draws them)."""
    import report
    image_root = index.info.get('image_root') or '.'
    query_root = args.image_root if args.dataset and not args.query_embeddings else '.'
    rows = [[row for row, _ in one] for one in hits]
    dists = [[dist for _, dist in one] for one in hits]
    try:
        page = report.write_search_report(
            args.report, [str(name) for name in names],
            [os.path.join(query_root, str(name)) for name in names],
            None if pids is None else [str(pid) for pid in pids],
            rows, dists, index.pids, index.fids,
            lambda row: os.path.join(image_root, index.fids[row]), args.max_distance)
    except OSError as e:
        raise common.InputError(f'cannot write the report into {args.report}: {e}') from None
    print(f'report: {page}', file=sys.stderr)


# ----------------------------------------------------------------------------- calibrate
def calibrate(embs: np.ndarray, pids: np.ndarray, metric: str, anchors: int = 2000,
              negatives: int = 2_000_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distances of same-identity and of different-identity pairs of a labelled set.

    Args:
        embs: (N, D). pids: (N,).
        anchors: rows compared with all N rows (all rows if N is smaller).
        negatives: different-identity distances kept at most (a uniform sample).

    Returns:
        (positives, negatives): 1-D float64 arrays of distances; a row is never paired with
        itself.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(len(embs)) if len(embs) <= anchors else np.sort(
        rng.choice(len(embs), anchors, replace=False))
    codes = np.unique(pids, return_inverse=True)[1]
    to_all = loss.cdist_to(embs, metric)
    keep_rate = min(1.0, negatives / max(1, len(rows) * (len(embs) - 1)))
    same, different = [], []
    for start in range(0, len(rows), 256):
        batch = rows[start:start + 256]
        dists = to_all(embs[batch])
        matches = codes[batch, None] == codes[None, :]
        itself = np.zeros_like(matches)
        itself[np.arange(len(batch)), batch] = True
        same.append(dists[matches & ~itself])
        others = dists[~matches]
        if keep_rate < 1:
            others = others[rng.random(len(others)) < keep_rate]
        different.append(others)
    return np.concatenate(same), np.concatenate(different)


def run_calibrate(args: argparse.Namespace) -> None:
    embs, pids, _ = load_labelled(args.embeddings, args.dataset)
    keep = ~np.isin(pids, args.ignore_identities)
    embs, pids = embs[keep], pids[keep]
    if args.false_match_rate >= 1:
        raise common.InputError(f'--false_match_rate {args.false_match_rate} must be below 1')
    metric = args.metric or embedding_settings(args.embeddings[0], None, None)['metric']
    same, different = calibrate(embs, pids, metric, args.anchors)
    if not len(same) or not len(different):
        raise common.InputError(f'{args.dataset} needs identities with two or more images and '
                                'at least two identities to calibrate')
    different.sort()
    print(f'{len(same)} same-identity and {len(different)} different-identity pairs '
          f'({metric}); for each false-match rate, the distance and the true matches within it:')
    rates = sorted({0.001, 0.01, 0.05, args.false_match_rate})
    for rate in rates:
        # The largest distance at which at most `rate` of the different pairs fall within.
        count = int(np.floor(rate * len(different)))
        distance = different[count - 1] if count else different[0] * (1 - 1e-9)
        mark = '  <- suggested' if rate == args.false_match_rate else ''
        print(f'  false matches {rate:7.2%}  --max_distance {distance:.6g}  true matches '
              f'{np.mean(same <= distance):7.2%}{mark}')


# ----------------------------------------------------------------------------- serve, join
def run_serve(args: argparse.Namespace) -> None:
    import service
    service.serve(args)


def run_join(args: argparse.Namespace) -> None:
    count = common.join_embedding_parts(args.parts, args.out)
    print(f'joined {len(args.parts)} parts ({count} rows) into {args.out}')


def main(argv: list[str] | None = None) -> None:
    args = parser.parse_args(argv)
    {'index': run_index, 'query': run_query, 'calibrate': run_calibrate, 'serve': run_serve,
     'join': run_join}[args.command](args)


if __name__ == '__main__':
    common.run(main)
