"""DukeMTMC-reID: names like 0005_c2_f0046985.jpg (identity, camera c2, frame)."""
import numpy as np

from excluders._camera import CameraExcluder

PATTERN = r'(-?\d+)_c(\d+)_f\d+'


class Excluder(CameraExcluder):
    example = '0005_c2_f0046985.jpg'

    def __init__(self, gallery_fids: np.ndarray):
        super().__init__(gallery_fids, PATTERN, 'DukeMTMC-reID')
