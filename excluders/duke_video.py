"""DukeMTMC-VideoReID: gallery/0001/0034/0001_C6_F0099_X30823.jpg (identity, camera C6, frame).

The tracklet is the folder (`0034`), not part of the name; the 2018 release's older names
have no underscores (`0001C6F0099X30823.jpg`) and parse too. The rule is DukeMTMC-reID's: a
query's identity seen by its camera is ignored. The dataset has neither junk nor distractors,
and its query tracklets are not in the gallery.
"""
import numpy as np

from excluders._camera import CameraExcluder

# Identity and camera; data/prepare.py parses the files with it.
PATTERN = r'(\d{4})_?C(\d+)_?F\d+'
EXAMPLES = ['0001_C6_F0099_X30823.jpg', '0001_C2_F0001_X10001.jpg', '0002_C6_F0042_X30001.jpg',
            '0002C1F0001X00001.jpg']


class Excluder(CameraExcluder):
    def __init__(self, gallery_fids: np.ndarray):
        super().__init__(gallery_fids, PATTERN, 'DukeMTMC-VideoReID', EXAMPLES[0])
