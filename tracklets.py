"""Video re-identification: frames grouped into tracklets, pooled, and scored as one entry each.

The protocol is that of MARS (Zheng et al., ECCV 2016) as its authors' MARS-evaluation code
computes it (`process_box_feat.m`, `evaluation_mars.m`):

- a tracklet's embedding pools its frames' embeddings: element-wise max, then L2
  normalisation (`--tracklets max --tracklet_normalize`); the mean is the other usual choice;
- the gallery is every test tracklet, the query tracklets included; for a query tracklet,
  gallery tracklets of its identity seen by its camera (itself among them) and junk tracklets
  (identity -1, `00-1` in names) are ignored; distractors (identity 0) count as negatives;
- tracklets are ranked by the Euclidean distance of the pooled embeddings (here: --metric,
  euclidean by default), and scored with the Market-1501 trapezoid AP and CMC.

Here the frames come from dataset CSVs (one line per image) and HDF5 embeddings, as for images.
A frame's tracklet is read from its path through the excluder's PATTERN: the frames of one
tracklet share their folder and the part of the file name up to the end of the pattern's last
group (MARS: `bbox_test/0001/0001C1T0001`, identity, camera and tracklet number; DukeMTMC-
VideoReID, whose tracklet is a folder: `gallery/0001/0034/0001_C6`); for an excluder without a
pattern (`diagonal`) a tracklet is a folder. A query CSV listing some frames of a tracklet pools
those frames. The excluder's rule is applied to one frame of each tracklet, and a query's own
tracklet (the same name in the gallery) is always ignored.

What differs from the authors' code: their pooling reads the frame ranges of
`tracks_test_info.mat` from one feature matrix held whole in memory, and a query is a column
of the pooled test set (`query_IDX.mat`); here the HDF5 files are read in chunks of CHUNK_ROWS
frames, so memory holds one chunk plus the pooled tracklets, and a query tracklet pools the
frames its CSV lists, from its own HDF5 file or, without one, from the gallery's rows of the
same files (then identical to theirs). Identity and camera for the rule come from the file
names, as theirs from `tracks_test_info.mat`; matches are decided by the CSVs' identities,
which prepare.py takes from the names. A query without any valid match in the gallery gets
AP 0/0 = NaN there (MATLAB), which makes their mAP NaN; MARS's official queries all have one.
Here such a query is left out of mAP and CMC and counted, as for images.
"""
import re

import numpy as np

import common

CHUNK_ROWS = 2**16  # frames read at once: 32 MiB of 128-D float32 embeddings
FRAMES_SHOWN = 3  # frames per tracklet on the results page: first, middle, last
POOLINGS = ('max', 'mean')


class Tracklets:
    """The tracklets of one dataset CSV.

    Attributes:
        names: (T,) tracklet names, e.g. `bbox_test/0001/0001C1T0001`, in order of first frame.
        pids: (T,) their identity (the CSV's identity column).
        of_frame: (N,) the tracklet index of each CSV row.
        sizes: (T,) frames per tracklet.
        shown: (T,) lists of up to FRAMES_SHOWN fids (first, middle, last) for the results page.
        embs: (T, D) pooled embeddings, once `pool` has run.
    """

    def __init__(self, pids: np.ndarray, fids: np.ndarray, pattern: str | None, csv_file: str):
        regex = re.compile(pattern) if pattern else None
        index, names, first, numbers = {}, [], [], []
        pid_list = pids.tolist()  # Python strings: a tenth of the time of NumPy's per element
        for row, (pid, fid) in enumerate(zip(pid_list, fids.tolist(), strict=True)):
            name = tracklet_name(fid, regex, csv_file)
            number = index.setdefault(name, len(names))
            if number == len(names):
                names.append(name)
                first.append(row)
            elif pid != pid_list[first[number]]:
                raise common.InputError(
                    f'{csv_file}: tracklet {name} holds identity {pid_list[first[number]]} '
                    f'({fids[first[number]]}) and {pid} ({fid})')
            numbers.append(number)
        of_frame = np.array(numbers, np.int64)
        self.names, self.pids = np.array(names), pids[first]
        self.first_fids, self.of_frame = fids[first], of_frame
        self.sizes = np.bincount(of_frame, minlength=len(names))
        self.shown = _frames_shown(fids, of_frame, len(names))
        self.embs = None

    def pool(self, h5_files: str | list[str], pooling: str, normalize: bool, csv_file: str,
             also: tuple['Tracklets', np.ndarray] | None = None) -> None:
        """Sets `embs` (T, D): each tracklet's max or mean over its frames' embeddings, read
        from `h5_files` (one file, or shards whose rows follow each other) in chunks.

        `also` = (other Tracklets, (n,) file rows of its frames) pools those in the same pass:
        query tracklets whose frames are rows of the gallery's files.
        """
        targets = [(self, None)] + ([also] if also else [])
        pooled, total = [], 0
        for h5_file in [h5_files] if isinstance(h5_files, str) else h5_files:
            for start, chunk in common.embedding_chunks(h5_file, CHUNK_ROWS):
                first, last = total + start, total + start + len(chunk)
                if not pooled:
                    pooled = [np.full((len(sets.names), chunk.shape[1]),
                                      -np.inf if pooling == 'max' else 0.0) for sets, _ in targets]
                elif chunk.shape[1] != pooled[0].shape[1]:
                    raise common.InputError(f'{h5_file}: {chunk.shape[1]}-D embeddings after '
                                            f'{pooled[0].shape[1]}-D ones')
                for (sets, rows), out in zip(targets, pooled, strict=True):
                    if rows is None and last <= len(self.of_frame):
                        _pool_chunk(out, chunk, sets.of_frame[first:last], pooling)
                    elif rows is not None:
                        frames = np.flatnonzero((rows >= first) & (rows < last))
                        _pool_chunk(out, chunk[rows[frames] - first], sets.of_frame[frames],
                                    pooling)
            total = last
        if total != len(self.of_frame):
            files = h5_files if isinstance(h5_files, str) else ', '.join(h5_files)
            raise common.InputError(f'{csv_file} has {len(self.of_frame)} rows but the '
                                    f'embeddings have {total} ({files}): were they computed '
                                    'from another CSV?')
        for (sets, _), out in zip(targets, pooled, strict=True):
            if pooling == 'mean':
                out /= sets.sizes[:, None]
            if normalize:
                out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
            sets.embs = out.astype(np.float32)


def tracklet_name(fid: str, regex: re.Pattern | None, csv_file: str) -> str:
    """`folder/name-up-to-the-frame` of one frame's path (see the module docstring)."""
    # String operations, not pathlib: this runs once per frame (681,089 for MARS).
    folder, _, name = str(fid).replace('\\', '/').rpartition('/')
    if regex is None:
        if not folder:
            raise common.InputError(f'{csv_file}: {fid} is in no folder: without a file-name '
                                    'pattern (this --excluder) a tracklet is a folder')
        return folder
    match = regex.match(name)
    if match is None:
        raise common.InputError(f'{csv_file}: {fid} does not name a tracklet frame (expected '
                                f'names matching {regex.pattern!r}); choose another --excluder')
    if not regex.groups:
        return folder
    return f'{folder}/{name[:match.end(regex.groups)]}' if folder else name[:match.end(
        regex.groups)]


def _frames_shown(fids: np.ndarray, of_frame: np.ndarray, count: int) -> list[list[str]]:
    """Up to FRAMES_SHOWN fids of each tracklet, evenly spread over its CSV rows."""
    order = np.argsort(of_frame, kind='stable')
    starts = np.searchsorted(of_frame[order], np.arange(count + 1))
    shown = []
    for t in range(count):
        rows = order[starts[t]:starts[t + 1]]
        picks = np.unique(np.linspace(0, len(rows) - 1, FRAMES_SHOWN).round().astype(int))
        shown.append([str(fids[rows[i]]) for i in picks])
    return shown


def _pool_chunk(pooled: np.ndarray, chunk: np.ndarray, of_frame: np.ndarray, pooling: str) -> None:
    """Folds a chunk of frames (n, D) into `pooled` (T, D), max or sum per tracklet."""
    if len(chunk) == 0:
        return
    if np.any(of_frame[1:] < of_frame[:-1]):  # sorted CSVs keep a tracklet's frames together
        order = np.argsort(of_frame, kind='stable')
        chunk, of_frame = chunk[order], of_frame[order]
    starts = np.r_[0, np.flatnonzero(np.diff(of_frame)) + 1]
    ids = of_frame[starts]  # each once
    if pooling == 'max':
        pooled[ids] = np.maximum(pooled[ids], np.maximum.reduceat(chunk, starts))
    else:
        pooled[ids] += np.add.reduceat(chunk.astype(np.float64), starts)


class TrackletExcluder:
    """An image excluder's rule applied to tracklets, one frame standing for each.

    Args:
        excluder_class: the `Excluder` of an excluders/ module.
        query, gallery: Tracklets of the query and the gallery CSV.

    Calling it with query tracklet names (B,) gives the (B, T) mask of gallery tracklets to
    ignore: those the rule ignores for the query's first frame, and the query's own tracklet.
    """

    def __init__(self, excluder_class, query: Tracklets, gallery: Tracklets):
        self.frames = excluder_class(gallery.first_fids)
        self.first_fid = dict(zip(query.names, query.first_fids, strict=True))
        self.own = {name: column for column, name in enumerate(gallery.names)}
        self.gallery_size = len(gallery.names)

    def __call__(self, query_names: np.ndarray) -> np.ndarray:
        mask = self.frames(np.array([self.first_fid[name] for name in query_names]))
        for row, name in enumerate(query_names):
            if name in self.own:
                mask[row, self.own[name]] = True
        return mask


def check_split(query: Tracklets, gallery: Tracklets, query_csv: str, gallery_csv: str) -> int:
    """Raises if a tracklet has one identity in the query CSV and another in the gallery's;
    returns how many query tracklets are also gallery tracklets (MARS: all of them)."""
    column = {name: i for i, name in enumerate(gallery.names)}
    shared = 0
    for name, pid, fid in zip(query.names, query.pids, query.first_fids, strict=True):
        if name in column:
            shared += 1
            other = column[name]
            if gallery.pids[other] != pid:
                raise common.InputError(
                    f'tracklet {name} has identity {pid} in {query_csv} ({fid}) but '
                    f'{gallery.pids[other]} in {gallery_csv} ({gallery.first_fids[other]})')
    return shared


def gallery_rows(query_fids: np.ndarray, gallery_fids: np.ndarray, query_csv: str,
                 gallery_csv: str) -> np.ndarray:
    """(Q,) the gallery CSV's row of each query frame (the same file)."""
    row_of = {fid: row for row, fid in enumerate(gallery_fids)}
    missing = [fid for fid in query_fids if fid not in row_of]
    if missing:
        raise common.InputError(f'{len(missing)} frames of {query_csv} are not in {gallery_csv}, '
                                f'e.g. {", ".join(missing[:3])}: without --query_embeddings '
                                'the query frames are taken from the gallery')
    return np.array([row_of[fid] for fid in query_fids], np.int64)


def load(query_csv: str, query_h5, gallery_csv: str, gallery_h5, excluder_module,
         pooling: str, normalize: bool) -> tuple[Tracklets, Tracklets, TrackletExcluder, dict]:
    """Reads both CSVs, groups their frames into tracklets and pools the embeddings.

    `query_h5` None takes the query frames' embeddings from the gallery's files (MARS: every
    query frame is a test frame, and need not be embedded twice).

    Returns:
        query and gallery Tracklets (with `embs`), the TrackletExcluder, and what the JSON
        records: pooling, normalisation, counts of tracklets and frames.

    Raises:
        common.InputError: names that do not parse, a tracklet with two identities (within a
            CSV, or between query and gallery), row counts or sizes that do not match, query
            frames missing from the gallery CSV (without `query_h5`).
    """
    pattern = getattr(excluder_module, 'PATTERN', None)
    query_pids, query_fids = common.load_dataset(query_csv)
    query = Tracklets(query_pids, query_fids, pattern, query_csv)
    gallery_pids, gallery_fids = common.load_dataset(gallery_csv)
    gallery = Tracklets(gallery_pids, gallery_fids, pattern, gallery_csv)
    rows = None if query_h5 else gallery_rows(query_fids, gallery_fids, query_csv, gallery_csv)
    del query_pids, query_fids, gallery_pids, gallery_fids  # the tracklets keep what they need
    if query_h5:
        query.pool(query_h5, pooling, normalize, query_csv)
    gallery.pool(common.ordered_parts(gallery_h5), pooling, normalize, gallery_csv,
                 also=None if query_h5 else (query, rows))
    if query.embs.shape[1] != gallery.embs.shape[1]:
        raise common.InputError(f'query embeddings are {query.embs.shape[1]}-D but gallery '
                                f'embeddings are {gallery.embs.shape[1]}-D')
    shared = check_split(query, gallery, query_csv, gallery_csv)
    excluder = TrackletExcluder(excluder_module.Excluder, query, gallery)
    info = {'pooling': pooling, 'normalize': normalize,
            'query_tracklets': len(query.names), 'gallery_tracklets': len(gallery.names),
            'query_frames': len(query.of_frame), 'gallery_frames': len(gallery.of_frame),
            'query_tracklets_in_gallery': shared,
            'single_frame_tracklets': int((query.sizes == 1).sum() + (gallery.sizes == 1).sum()),
            'query_frames_from': 'query' if query_h5 else 'gallery'}
    return query, gallery, excluder, info
