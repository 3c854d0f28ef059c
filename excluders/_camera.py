"""The multi-camera protocol of Market-1501 and DukeMTMC-reID; their modules give the pattern."""
import re
from pathlib import PurePath

import numpy as np

from common import InputError


class CameraExcluder:
    """Ignores gallery images of the query's identity seen by the query's camera, and junk.

    Identity and camera are parsed from the file name with `pattern` (two groups: identity,
    camera), not taken from the CSV, as the datasets' official evaluation code does. Identity
    -1 marks junk images (Market-1501), ignored for every query; distractors (identity 0000)
    stay in the gallery as negatives.
    """

    def __init__(self, gallery_fids: np.ndarray, pattern: str, dataset: str, example: str):
        self.pattern, self.dataset, self.example = re.compile(pattern), dataset, example
        self.gallery_pids, self.gallery_cams = self.parse(gallery_fids)
        self.junk = self.gallery_pids == -1
        self.gallery_views = self.view(self.gallery_pids, self.gallery_cams)

    def parse(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Identity and camera of every fid: two int arrays (N,)."""
        pids, cams = np.empty(len(fids), np.int64), np.empty(len(fids), np.int64)
        for i, fid in enumerate(fids):
            match = self.pattern.match(PurePath(str(fid)).name)
            if match is None:
                raise InputError(f'{fid}: not a {self.dataset} file name (expected a name like '
                                 f'{self.example}); choose another --excluder')
            pids[i], cams[i] = int(match.group(1)), int(match.group(2))
        return pids, cams

    @staticmethod
    def view(pids: np.ndarray, cams: np.ndarray) -> np.ndarray:
        """One number per (identity, camera) pair: one comparison of (Q, G) instead of three."""
        return pids * 2**20 + cams  # camera numbers are far below 2^20

    def __call__(self, query_fids: np.ndarray) -> np.ndarray:
        """The (Q, G) mask of gallery entries to ignore for each query."""
        views = self.view(*self.parse(query_fids))
        return (views[:, None] == self.gallery_views[None, :]) | self.junk[None, :]
