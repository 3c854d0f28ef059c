"""The results page of evaluate.py --report: one folder a person opens in a browser, or zips.

    DIR/index.html            summary, CMC curve, AP histogram, then one row per chosen query
    DIR/cmc.png, DIR/ap_histogram.png
    DIR/queries/NNNN.png      the query and its top-k gallery images, framed green (same
                              identity), red (another identity) or grey (ignored by the
                              excluder), with rank, distance and identity under each

Every picture is drawn with matplotlib; the page links them by relative paths only. By default
the worst queries by AP come first (where the model fails), with a few of the best for contrast.
"""
import html
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

import common

ORDERS = ('worst', 'best', 'random')
COLOURS = {'match': '#1a9c1a', 'wrong': '#d62020', 'ignored': '#9a9a9a',
           'unlabelled': '#3060c0'}  # search.py: a query without a known identity
THUMB = (128, 64)  # (height, width) of a gallery picture in pixels, Market-1501's size
CMC_RANKS = 50


def choose_queries(aps: list, count: int, order: str, seed: int = 0) -> list[int]:
    """Indices of the queries to show: `worst` (lowest AP first, then a fifth of the rows from
    the best end for contrast), `best` or `random`. Queries without a valid match (AP None) are
    not shown: they have nothing to rank."""
    valid = np.array([i for i, ap in enumerate(aps) if ap is not None], int)
    count = min(count, len(valid))
    if order == 'random':
        return sorted(np.random.default_rng(seed).choice(valid, count, replace=False).tolist())
    by_ap = valid[np.argsort([aps[i] for i in valid], kind='stable')]
    if order == 'best':
        return by_ap[::-1][:count].tolist()
    contrast = count // 5 if count >= 5 else 0
    worst = by_ap[:count - contrast].tolist()
    best = [i for i in by_ap[::-1][:contrast].tolist() if i not in worst]
    return worst + best


def ranked_row(dists: np.ndarray, ignored: np.ndarray, matches: np.ndarray, top_k: int) -> dict:
    """The first `top_k` gallery entries of one query by distance (ties in gallery order, as the
    evaluation ranks them), ignored ones included but not counted in the ranks.

    Args:
        dists, ignored, matches: (G,) distances, excluder mask, same-identity-and-not-ignored.

    Returns:
        {'entries': [(gallery index, rank or None if ignored, kind)], 'first_match': rank of the
        first match (1-based) or None}.
    """
    order = np.argsort(dists, kind='stable')
    entries, rank = [], 0
    for index in order[:top_k]:
        if ignored[index]:
            entries.append((int(index), None, 'ignored'))
            continue
        rank += 1
        entries.append((int(index), rank, 'match' if matches[index] else 'wrong'))
    valid_order = order[~ignored[order]]
    hits = np.flatnonzero(matches[valid_order])
    return {'entries': entries, 'first_match': int(hits[0]) + 1 if len(hits) else None}


def read_thumbnail(path: str | list[str]) -> np.ndarray | None:
    """An RGB uint8 picture of THUMB size, or None if the file is missing or unreadable.

    A list of paths (a few frames of a tracklet) gives their pictures side by side; a missing
    frame is a grey one, and None only if every frame is missing.
    """
    import cv2
    if not isinstance(path, str):
        frames = [read_thumbnail(one) for one in path]
        if all(frame is None for frame in frames):
            return None
        return np.concatenate([np.full((*THUMB, 3), 200, np.uint8) if frame is None else frame
                               for frame in frames], axis=1)
    image = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.isfile(path) else None
    if image is None:
        return None
    return cv2.resize(image, THUMB[::-1], interpolation=cv2.INTER_AREA)[..., ::-1]


def draw_panel(axis, image: np.ndarray | None, name: str, colour: str, caption: str) -> None:
    """One framed picture with its caption; a missing image becomes a grey box with its name."""
    if image is None:
        image = np.full((*THUMB, 3), 200, np.uint8)
        label = name if len(name) <= 18 else '...' + name[-15:]
        axis.text(THUMB[1] / 2, THUMB[0] / 2, literal(f'missing\n{label}'), ha='center',
                  va='center', fontsize=6, wrap=True)
    axis.imshow(image)
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(5)
    axis.set_xlabel(literal(caption), fontsize=7, linespacing=1.1)


def literal(text: str) -> str:
    """Text that matplotlib draws as it is: a `$` in a name would otherwise start a formula
    (and a bad one, e.g. `$\\x`, stop the report with an error)."""
    return text.replace('$', r'\$')


def draw_query(path: Path, query: dict, gallery: dict, row: dict, dists: np.ndarray) -> None:
    """The PNG of one query (black frame) and its ranked gallery entries."""
    import matplotlib.pyplot as plt
    entries = row['entries']
    # Tracklets show a few frames side by side: wider panels.
    frames = 1 if isinstance(query['path'], str) else max(1, len(query['path']))
    figure, axes = plt.subplots(1, len(entries) + 1,
                                figsize=((0.95 + 0.55 * (frames - 1)) * (len(entries) + 1), 2.3),
                                squeeze=False)
    draw_panel(axes[0, 0], read_thumbnail(query['path']), query['fid'], 'black',
               f"query\nid {query['pid']}")
    for axis, (index, rank, kind) in zip(axes[0, 1:], entries, strict=True):
        caption = (f"{'ignored' if rank is None else f'#{rank}'}\n{dists[index]:.3f}\n"
                   f"id {gallery['pids'][index]}")
        draw_panel(axis, read_thumbnail(gallery['paths'][index]), gallery['fids'][index],
                   COLOURS[kind], caption)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.22, wspace=0.12)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def draw_cmc(path: Path, cmc: list[float]) -> None:
    import matplotlib.pyplot as plt
    ranks = np.arange(1, min(CMC_RANKS, len(cmc)) + 1)
    values = 100 * np.asarray(cmc[:len(ranks)])
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot(ranks, values, marker='o', markersize=3)
    for k in (1, 5, 10):
        if k <= len(ranks):
            axis.annotate(f'{values[k - 1]:.1f}%', (k, values[k - 1]), textcoords='offset points',
                          xytext=(4, -12), fontsize=8)
    axis.set(xlabel='rank', ylabel='matching rate (%)', title='CMC', xlim=(0, len(ranks) + 1),
             ylim=(max(0, values.min() - 5), 100.5))
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def draw_ap_histogram(path: Path, aps: list) -> None:
    import matplotlib.pyplot as plt
    values = [ap for ap in aps if ap is not None]
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.hist(values, bins=20, range=(0, 1), color='#4070c0')
    axis.set(xlabel='average precision', ylabel='queries', title='AP per query')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(folder: str | os.PathLike, result: dict, query: dict, gallery: dict,
                 distance_rows: Callable[[np.ndarray], np.ndarray],
                 ignored_rows: Callable[[np.ndarray], np.ndarray], options: dict,
                 count: int = 20, order: str = 'worst', top_k: int = 10) -> Path:
    """Writes the results page and its pictures into `folder` (created; files replaced).

    Args:
        result: evaluate's result ('mAP', 'mINP', 'CMC', 'aps').
        query, gallery: {'pids', 'fids', 'paths'}: (N,) arrays of identities, file names as in
            the CSV, and image files to show (for tracklets: names, and a list of a few
            frames' files each, drawn side by side).
        distance_rows: query indices (n,) -> (n, G) distances, those the evaluation used.
        ignored_rows: query indices (n,) -> (n, G) bool excluder masks.
        options: what to show as the protocol and options (name -> value).
        count, order, top_k: how many queries, which (ORDERS), and gallery entries per query.

    Returns:
        The path of index.html.
    """
    folder = Path(folder)
    (folder / 'queries').mkdir(parents=True, exist_ok=True)
    draw_cmc(folder / 'cmc.png', result['CMC'])
    draw_ap_histogram(folder / 'ap_histogram.png', result['aps'])
    chosen = choose_queries(result['aps'], count, order)
    rows = []
    if chosen:
        dists, ignored = distance_rows(np.array(chosen)), ignored_rows(np.array(chosen))
        for n, i in enumerate(chosen):
            matches = (gallery['pids'] == query['pids'][i]) & ~ignored[n]
            row = ranked_row(dists[n], ignored[n], matches, top_k)
            picture = f'queries/{n:04d}.png'
            one = {'pid': query['pids'][i], 'fid': query['fids'][i], 'path': query['paths'][i]}
            draw_query(folder / picture, one, gallery, row, dists[n])
            rows.append((i, row, picture))
    page = render_html(result, query, options, rows, order, top_k)
    index = folder / 'index.html'
    with common.atomic_write(index) as tmp:
        tmp.write_text(page, encoding='utf-8')
    return index


def render_html(result: dict, query: dict, options: dict, rows: list, order: str,
                top_k: int) -> str:
    """The page; every name from the data is escaped (file names can hold anything)."""
    esc = html.escape
    cmc = result['CMC']
    numbers = [('mAP', result['mAP']), ('mINP', result.get('mINP', 0.0))]
    numbers += [(f'top-{k}', cmc[k - 1]) for k in (1, 5, 10) if k <= len(cmc)]
    valid = sum(ap is not None for ap in result['aps'])
    summary = ''.join(f'<td><b>{esc(name)}</b><br>{value:.2%}</td>' for name, value in numbers)
    settings = ''.join(f'<li>{esc(str(key))}: {esc(str(value))}</li>'
                       for key, value in options.items())
    blocks = []
    for i, row, picture in rows:
        ap = result['aps'][i]
        first = row['first_match']
        beyond = (f' &middot; first match at rank {first}' if first and first > top_k else '')
        blocks.append(f'<div class="query"><p>query {esc(str(query["fids"][i]))} (id '
                      f'{esc(str(query["pids"][i]))}) &middot; AP {ap:.2%}{beyond}</p>'
                      f'<img src="{esc(picture)}" alt="ranked list of query '
                      f'{esc(str(query["fids"][i]))}"></div>')
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Re-identification results</title>
<style>
body {{ font-family: sans-serif; margin: 20px; background: #fff; color: #222; }}
table td {{ padding: 4px 14px; text-align: center; font-size: 18px; }}
.plots img {{ margin-right: 16px; }} .query {{ margin: 10px 0; }} .query p {{ margin: 2px 0; }}
.legend span {{ font-weight: bold; margin-right: 10px; }}
</style></head><body>
<h1>Re-identification results</h1>
<table><tr>{summary}</tr></table>
<p>{valid} queries with a valid match out of {len(result['aps'])}.</p>
<ul>{settings}</ul>
<div class="plots"><img src="cmc.png" alt="CMC curve"><img src="ap_histogram.png"
 alt="histogram of per-query AP"></div>
<h2>{len(rows)} queries, {esc(order)} first, top {top_k}</h2>
<p class="legend"><span style="color:{COLOURS['match']}">same identity</span>
<span style="color:{COLOURS['wrong']}">other identity</span>
<span style="color:{COLOURS['ignored']}">ignored by the protocol</span>
Under each picture: rank among the entries that count, distance, identity.</p>
{''.join(blocks)}
</body></html>
"""


# ----------------------------------------------------------------------------- search results
def write_search_report(folder: str | os.PathLike, names: list[str], query_paths: list[str],
                        query_pids: list[str] | None, rows: list[list[int]],
                        dists: list[list[float]], gallery_pids: list, gallery_fids: list,
                        gallery_path: Callable[[int], str],
                        max_distance: float | None = None) -> Path:
    """search.py query --report: the ranked list of each query, drawn as evaluate.py draws its
    queries, on a page of its own.

    Args:
        names, query_paths: (Q,) query names and image files (missing ones are drawn grey).
        query_pids: (Q,) identities when known (then green/red frames), else None (blue).
        rows, dists: per query, the gallery indices and distances, nearest first.
        gallery_pids, gallery_fids: identities and paths of the gallery, by index.
        gallery_path: gallery index -> image file to show.
        max_distance: entries beyond it are framed grey.

    Returns:
        The path of index.html.
    """
    esc = html.escape
    folder = Path(folder)
    (folder / 'queries').mkdir(parents=True, exist_ok=True)
    blocks = []
    for n, (name, hits, row_dists) in enumerate(zip(names, rows, dists, strict=True)):
        pid = None if query_pids is None else query_pids[n]
        entries = []
        for local, (index, dist) in enumerate(zip(hits, row_dists, strict=True)):
            kind = 'unlabelled' if pid is None else (
                'match' if gallery_pids[index] == pid else 'wrong')
            if max_distance is not None and dist > max_distance:
                kind = 'ignored'
            entries.append((local, local + 1, kind))
        shown = {'pids': [gallery_pids[i] for i in hits], 'fids': [gallery_fids[i] for i in hits],
                 'paths': [gallery_path(i) for i in hits]}
        picture = f'queries/{n:04d}.png'
        draw_query(folder / picture, {'pid': '?' if pid is None else pid, 'fid': name,
                                      'path': query_paths[n]},
                   shown, {'entries': entries}, np.asarray(row_dists))
        matched = ('' if max_distance is None else ' &middot; no match within '
                   f'{max_distance:g}' if not any(d <= max_distance for d in row_dists) else '')
        blocks.append(f'<div class="query"><p>query {esc(str(name))}{matched}</p>'
                      f'<img src="{esc(picture)}" alt="ranked list of {esc(str(name))}"></div>')
    beyond = (f'<span style="color:{COLOURS["ignored"]}">beyond --max_distance '
              f'{max_distance:g}</span>' if max_distance is not None else '')
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Search results</title>
<style>body {{ font-family: sans-serif; margin: 20px; }} .query {{ margin: 10px 0; }}
.legend span {{ font-weight: bold; margin-right: 10px; }}</style></head><body>
<h1>Search results: {len(names)} queries</h1>
<p class="legend"><span style="color:{COLOURS['match']}">same identity</span>
<span style="color:{COLOURS['wrong']}">other identity</span>
<span style="color:{COLOURS['unlabelled']}">query identity unknown</span> {beyond}
Under each picture: rank, distance, identity.</p>
{''.join(blocks)}
</body></html>
"""
    index = folder / 'index.html'
    with common.atomic_write(index) as tmp:
        tmp.write_text(page, encoding='utf-8')
    return index


# ----------------------------------------------------------------------------- projector
SPRITE_LIMIT = 8192  # TensorBoard's projector reads sprite images up to 8192 x 8192 pixels
SPRITE_THUMB_HEIGHTS = (64, 32, 16)  # person crops at 2:1; the smallest still shows clothing


def sprite_layout(count: int) -> tuple[int, int, int]:
    """(points shown, thumbnails per row, thumbnail height): the projector wants a square grid,
    row-major, at most SPRITE_LIMIT pixels a side; thumbnails shrink before points are left out."""
    for height in SPRITE_THUMB_HEIGHTS:
        per_row = SPRITE_LIMIT // height
        if count <= per_row ** 2:
            return count, max(1, int(np.ceil(np.sqrt(count)))), height
    return per_row ** 2, per_row, SPRITE_THUMB_HEIGHTS[-1]


def cameras(fids: np.ndarray) -> list[str]:
    """The camera of each file name, by the first dataset pattern of excluders/ that parses all
    of them; empty strings if none does."""
    import re

    from model import import_plugin, plugin_names
    names = [os.path.basename(str(fid)) for fid in fids]
    for name in plugin_names('excluders'):
        pattern = getattr(import_plugin('excluders', name), 'PATTERN', None)
        matches = [re.match(pattern, n) for n in names] if pattern else [None]
        if all(matches):
            return [m.group(2) for m in matches]
    return [''] * len(names)


def write_projector(folder: str | os.PathLike, embs: np.ndarray, pids: np.ndarray,
                    fids: np.ndarray, paths: list[str], log=None) -> int:
    """TensorBoard projector files for embeddings (N, D): tensors.tsv, metadata.tsv (identity,
    camera, file), sprite.png and projector_config.pbtxt, which `tensorboard --logdir folder`
    reads. Returns how many points were written (fewer than N if the sprite could not hold
    them all, which is logged)."""
    import cv2
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count, per_row, height = sprite_layout(len(embs))
    width = height // 2
    if count < len(embs) and log is not None:
        log.warning('projector: %d of %d images written; TensorBoard\'s %dx%d sprite holds no '
                    'more thumbnails of %dx%d: %d left out (the last ones of the dataset)',
                    count, len(embs), SPRITE_LIMIT, SPRITE_LIMIT, width, height,
                    len(embs) - count)
    np.savetxt(folder / 'tensors.tsv', embs[:count], fmt='%.9g', delimiter='\t')
    cams = cameras(fids[:count])
    with open(folder / 'metadata.tsv', 'w', encoding='utf-8') as f:
        f.write('identity\tcamera\tfile\n')
        for pid, cam, fid in zip(pids[:count], cams, fids[:count], strict=True):
            # One line per point, three columns: no tab or line break may come from a name.
            cells = [' '.join(str(cell).split()) for cell in (pid, cam, fid)]
            f.write('\t'.join(cells) + '\n')
    sprite = np.zeros((per_row * height, per_row * width, 3), np.uint8)
    for i, path in enumerate(paths[:count]):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is not None:
            row, col = divmod(i, per_row)
            sprite[row * height:(row + 1) * height, col * width:(col + 1) * width] = cv2.resize(
                image, (width, height), interpolation=cv2.INTER_AREA)
    if not cv2.imwrite(str(folder / 'sprite.png'), sprite):
        raise OSError(f'cannot write {folder / "sprite.png"}')
    (folder / 'projector_config.pbtxt').write_text(
        'embeddings {\n  tensor_name: "embeddings"\n  tensor_path: "tensors.tsv"\n'
        '  metadata_path: "metadata.tsv"\n  sprite {\n    image_path: "sprite.png"\n'
        f'    single_image_dim: {width}\n    single_image_dim: {height}\n  }}\n}}\n')
    return count
