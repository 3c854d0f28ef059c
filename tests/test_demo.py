"""demo.sh: the quickstart's whole pipeline on the synthetic dataset, run as a user runs it."""
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_demo_runs_and_training_helps(tmp_path):
    # The quickstart's demo as a user runs it: training must carry the synthetic test set from
    # chance (about 1% mAP) to at least 50%. This is also the suite's proof that train.py learns.
    env = {**os.environ, 'DEMO_DATA': str(tmp_path / 'demo'),
           'DEMO_EXPERIMENT': str(tmp_path / 'experiment'),
           'PATH': f'{os.path.dirname(sys.executable)}{os.pathsep}{os.environ["PATH"]}'}
    done = subprocess.run(['bash', str(ROOT / 'demo.sh')], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    maps = [float(m) for m in re.findall(r'^mAP: ([\d.]+)%', done.stdout, re.MULTILINE)]
    assert len(maps) == 2 and '== untrained network:' in done.stdout, done.stdout
    untrained, trained = maps
    assert untrained < 10 and trained >= 50, done.stdout  # percent
    stages = re.findall(r'^(\w.*\S) +(\d+\.\d) s$', done.stdout, re.MULTILINE)
    assert len(stages) == 8 and stages[1][0].startswith('train'), done.stdout
