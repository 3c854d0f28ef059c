"""benchmarks/: each script runs (at toy sizes) and prints the numbers it promises.

The measurements themselves are not asserted: timings on a shared machine are noise. These
runs only keep the scripts from rotting.
"""
import re
import subprocess
import sys

import pytest
from conftest import ROOT

# One entry per script, and one per further mode of a script (`script --flag`).
RUNS = {
    'train_speed.py': (['--steps', '1', '--batch_p', '2', '--batch_k', '2', '--height', '64',
                        '--width', '32'], r'ratio ours / plain Keras: \d+\.\d\d'),
    'train_speed.py --mixed_precision': (
        ['--mixed_precision', 'float16', '--model_name', 'small_cnn', '--steps', '1',
         '--batch_p', '2', '--batch_k', '2', '--height', '32', '--width', '16'],
        r'ratio float16 / float32: \d+\.\d\d'),
    'train_speed.py --recipe': (
        ['--recipe', '--model_name', 'small_cnn', '--steps', '1', '--batch_p', '2', '--batch_k',
         '2', '--height', '32', '--width', '16'],
        r"strong baseline's head and losses cost [-+]\d+\.\d% time per step(.|\n)*"
        r'ratio strong baseline / 2017: \d+\.\d\d'),
    'train_speed.py --input_only': (
        ['--input_only', '--batch_p', '2', '--batch_k', '2', '--height', '32', '--width', '16',
         '--jpeg_height', '40', '--jpeg_width', '20', '--batches', '2'],
        r'\d+ images per CPU-second.*\n.*\n +cores to feed 2,000 images/s .*: \d+\.\d'),
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
    'evaluate_speed.py': (['--loop_queries', '2', '--repeats', '1'],
                          r'(.*evaluate +\d+\.\d\d s .*faster.*\n){4}'),
    'evaluate_speed.py --mars': (['--mars', '--mars_scale', '0.002'],
                                 r'own: \d+\.\d s, peak memory \d+ MiB.*\n.*mAP.*\n'
                                 r'.*gallery: \d+\.\d s, peak memory \d+ MiB.*\n.*mAP.*\n'
                                 r'pooling the gallery: peak \d+ MiB'),
    'rerank_speed.py': (['--small', '40', '160', '--no_market'],
                        r'ours \d+\.\d s, peak \d+ MiB.*dense \d+\.\d s'),
    'search_speed.py': (['--gallery', '3000', '--dim', '16', '--singles', '5',
                         '--recall_queries', '100'],
                        r'exact: build .* one query: .* peak memory \d+ MiB(.|\n)*'
                        r'faiss recall@10 against exact: \d\.\d{4}'),
    'serve_load.py': (['--gallery', '300', '--clients', '2', '--seconds', '2', '--height', '32',
                       '--width', '16', '--add_every', '3'],
                      r'all +\d+ requests, .* failed 0\nadditions: (\d+) acknowledged.*'
                      r'expected [\d,]+\), \1 of them in the index folder'),
    'soak.py': (['--iterations', '12', '--checkpoint_frequency', '3', '--keep_checkpoints', '2',
                 '--warmup', '4', '--identities', '5'],
                r'start \d+ MiB .*end \d+ MiB \(growth [-+]\d+\.\d%.*\n.*checkpoints .*'
                r'\(steps 9, 12\)'),
    'trinet_speed.py': (['--batch_size', '1', '--steps', '1'], r'network: \d+\.\d+ images/s'),
}


SCRIPTS = sorted(p.name for p in (ROOT / 'benchmarks').glob('[!_]*.py'))


def test_every_benchmark_has_a_toy_run():
    missing = set(SCRIPTS) - {run.split()[0] for run in RUNS}
    assert not missing, f'benchmarks/{", ".join(sorted(missing))}: no toy run in this test'


@pytest.mark.slow
@pytest.mark.parametrize('run', sorted(RUNS))
def test_benchmark_runs(run):
    script = run.split()[0]
    flags, expected = RUNS[run]
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / script), *flags],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(expected, done.stdout), done.stdout
