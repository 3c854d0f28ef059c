"""reporting.py: what is reported per iteration (the runs of test_train.py check the rest)."""
import numpy as np

import reporting


def test_collapse_detector():
    assert reporting.collapsed(np.full(8, np.log(2)) + 1e-4, 'soft')
    assert not reporting.collapsed(np.full(8, np.log(2)), 0.2)
    assert not reporting.collapsed(np.array([0.69, 0.9]), 'soft')
