"""Runs the project's scripts as `python script.py ARGS` does, in forks of one warm process.

A fresh Python pays ~4 s to import TensorFlow before a script reads its first argument; the
fuzz test runs many command lines. This process imports the libraries once and forks a child
per command line: the child redirects its standard output and error to files, changes into the
requested folder, sets sys.argv and runs the script as __main__, so the exit code, the output
and any traceback are those of a real run. Forking is safe because this process never runs a
TensorFlow op: TensorFlow starts its thread pools at the first op, in the child (the few threads
that the imports start, BLAS workers, are idle at the fork and not copied into the child).

    runner = ScriptRunner()
    result = runner.run('evaluate.py', ['--excluder', ...], cwd=folder)  # code, stdout, stderr
    runner.close()

Protocol between ScriptRunner and this file run as a program: one JSON request per line on
standard input, {"script", "argv", "cwd", "timeout"}; one JSON reply per line on standard output.
"""
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ScriptRunner:
    """The client: starts the warm process and sends it command lines."""

    def __init__(self):
        env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', 'CUDA_VISIBLE_DEVICES': ''}
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)

    def run(self, script: str, argv: list, cwd: Path, timeout: float = 60) -> dict:
        """Runs `python script argv...` in `cwd` (script relative to the repo root).

        Returns:
            {'code': exit code (-9 if killed), 'stdout', 'stderr', 'seconds', 'timed_out'}.
        """
        request = {'script': str(ROOT / script), 'argv': [str(a) for a in argv],
                   'cwd': str(cwd), 'timeout': timeout}
        self.process.stdin.write(json.dumps(request) + '\n')
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f'the script runner died (exit code {self.process.wait()})')
        return json.loads(reply)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


# ----------------------------------------------------------------------------- the warm process
def warm_up() -> None:
    """Imports what the scripts import, without running any TensorFlow op."""
    sys.path.insert(0, str(ROOT))
    import cv2  # noqa: F401
    import h5py  # noqa: F401
    import keras
    import matplotlib
    matplotlib.use('Agg')  # what a machine without a display gets
    import matplotlib.pyplot  # noqa: F401
    import scipy.io  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import tensorflow
    import tqdm  # noqa: F401

    # TensorFlow imports most of its modules on first access, which would then happen in every
    # child: touch what the scripts use.
    tf, keras = tensorflow, keras
    for used in (tf.train.latest_checkpoint, tf.train.Checkpoint, tf.train.CheckpointManager,
                 tf.train.load_checkpoint, tf.data.Dataset, tf.summary.create_file_writer,
                 tf.saved_model.save, tf.compat.v1.image.resize_bilinear, tf.image.resize,
                 tf.io.decode_image, tf.function, keras.optimizers.Adam, keras.Model):
        assert used is not None

    import model
    for folder in ('nets', 'heads', 'excluders', 'aggregators'):
        for name in model.plugin_names(folder):
            model.import_plugin(folder, name)


def child(request: dict, out: str, err: str) -> None:
    """Becomes `python script argv` in the forked child; never returns.

    The child leaves with os._exit once its output is flushed: the interpreter's tear-down of
    the warm modules takes seconds and is no part of the script.
    """
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(request['cwd'])
    sys.argv = [request['script'], *request['argv']]
    sys.path[0] = os.path.dirname(request['script'])  # as `python script` sets it
    try:
        runpy.run_path(request['script'], run_name='__main__')
        code = 0
    except SystemExit as e:  # what Python does with sys.exit(code)
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    except BaseException:  # what Python does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    replies = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)  # whatever this process prints must not mix with the replies
    warm_up()
    tmp = tempfile.mkdtemp(prefix='script_runner_')
    out, err = os.path.join(tmp, 'stdout'), os.path.join(tmp, 'stderr')
    for line in sys.stdin:
        request = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            replies.close()
            child(request, out, err)
        timed_out = False
        while not (status := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() - started > request['timeout']:
                os.kill(pid, signal.SIGKILL)
                status = os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.005)
        reply = {'code': os.waitstatus_to_exitcode(status[1]), 'timed_out': timed_out,
                 'seconds': time.monotonic() - started}
        for name, path in (('stdout', out), ('stderr', err)):
            with open(path, encoding='utf-8', errors='replace') as f:
                reply[name] = f.read()
        replies.write(json.dumps(reply) + '\n')
        replies.flush()
    shutil.rmtree(tmp)


if __name__ == '__main__':
    serve()
