"""Market-1501: names like 0001_c1s1_001051_00.jpg (identity, camera, sequence, frame, box)."""
import numpy as np

from excluders._camera import CameraExcluder

# Identity (-1: junk, 0000: distractor) and camera; data/prepare.py parses the files with it.
PATTERN = r'(-1|\d+)_c(\d+)s\d+_\d+_\d+'
EXAMPLES = ['0001_c1s1_001051_00.jpg', '0001_c2s1_000301_00.jpg', '0002_c1s1_000151_01.jpg',
            '-1_c3s1_000007_00.jpg', '0000_c1s1_000004_00.jpg']


class Excluder(CameraExcluder):
    def __init__(self, gallery_fids: np.ndarray):
        super().__init__(gallery_fids, PATTERN, 'Market-1501', EXAMPLES[0])
