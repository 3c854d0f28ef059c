"""benchmarks/: each script runs (at toy sizes) and prints the numbers it promises.

The measurements themselves are not asserted: timings on a shared machine are noise. These
runs only keep the scripts from rotting.
"""
import re
import subprocess
import sys

import pytest
from conftest import ROOT

RUNS = {
    'train_speed.py': (['--steps', '1', '--batch_p', '2', '--batch_k', '2', '--height', '64',
                        '--width', '32'], r'ratio ours / plain Keras: \d+\.\d\d'),
    'distribute_speed.py': (['--model_name', 'small_cnn', '--steps', '1', '--batch_p', '2',
                             '--batch_k', '2', '--height', '32', '--width', '16'],
                            r'sync / no sync: \d+\.\d\d; sync / one device: \d+\.\d\d'),
    'embed_speed.py': (['--model_name', 'small_cnn', '--height', '32', '--width', '16',
                        '--batch_size', '4', '--images', '8', '--rounds', '1'],
                       r'pipeline / bare throughput = \d+\.\d+'),
    'export_speed.py': (['--model_name', 'small_cnn', '--height', '32', '--width', '16',
                         '--jpeg_height', '40', '--jpeg_width', '20', '--batch_size', '4',
                         '--rounds', '1'],
                        r'serve_jpeg \(bytes -> embeddings\) +\d+\.\d images/s'),
    'evaluate_speed.py': (['--loop_queries', '2'], r'(.*evaluate +\d+\.\d\d s .*faster.*\n){4}'),
    'rerank_speed.py': (['--small', '40', '160', '--no_market'],
                        r'ours \d+\.\d s, peak \d+ MiB.*dense \d+\.\d s'),
    'trinet_speed.py': (['--batch_size', '1', '--steps', '1'], r'network: \d+\.\d+ images/s'),
}


@pytest.mark.slow
@pytest.mark.parametrize('script', sorted(p.name for p in (ROOT / 'benchmarks').glob('[!_]*.py')))
def test_benchmark_runs(script):
    assert script in RUNS, f'benchmarks/{script} has no toy run in this test'
    flags, expected = RUNS[script]
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / script), *flags],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(expected, done.stdout), done.stdout
