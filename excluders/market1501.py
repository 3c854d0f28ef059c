"""Market-1501: names like 0001_c1s1_001051_00.jpg (identity, camera, sequence, frame, box)."""
import numpy as np

from excluders._camera import CameraExcluder

PATTERN = r'(-?\d+)_c(\d+)s\d+_\d+_\d+'


class Excluder(CameraExcluder):
    example = '0001_c1s1_001051_00.jpg'

    def __init__(self, gallery_fids: np.ndarray):
        super().__init__(gallery_fids, PATTERN, 'Market-1501')
