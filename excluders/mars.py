"""MARS: names like 0001C1T0001F001.jpg (identity, camera C1, tracklet T0001, frame F001).

Identity `00-1` marks junk tracklets (ignored for every query), `0000` distractors (negatives
that count). Per image it applies the Market-1501 rule; with `evaluate.py --tracklets` the
same rule applies to whole tracklets, as the dataset's own MARS-evaluation code does: for a
query tracklet, gallery tracklets of its identity seen by its camera (itself included) and
junk are ignored. The pattern's third group, the tracklet number, tells tracklets apart.
"""
import numpy as np

from excluders._camera import CameraExcluder

# Identity (`00-1` parses as -1: the optional `00` is taken only then), camera, tracklet.
PATTERN = r'(?:00)?(-1|\d{4})C(\d+)T(\d+)F\d+'
EXAMPLES = ['0001C1T0001F001.jpg', '0001C2T0002F010.jpg', '0002C1T0003F001.jpg',
            '00-1C3T0001F001.jpg', '0000C1T0004F001.jpg']


class Excluder(CameraExcluder):
    def __init__(self, gallery_fids: np.ndarray):
        super().__init__(gallery_fids, PATTERN, 'MARS', EXAMPLES[0])
