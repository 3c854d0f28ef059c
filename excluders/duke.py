"""DukeMTMC-reID: names like 0005_c2_f0046985.jpg (identity, camera c2, frame)."""
import numpy as np

from excluders._camera import CameraExcluder

# Identity and camera; data/prepare.py parses the files with it.
PATTERN = r'(-1|\d+)_c(\d+)_f\d+'
EXAMPLES = ['0005_c2_f0046985.jpg', '0005_c3_f0046985.jpg', '0006_c2_f0046000.jpg']


class Excluder(CameraExcluder):
    def __init__(self, gallery_fids: np.ndarray):
        super().__init__(gallery_fids, PATTERN, 'DukeMTMC-reID', EXAMPLES[0])
