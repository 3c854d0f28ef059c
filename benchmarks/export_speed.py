#!/usr/bin/env python3
"""Times export.py's outputs against embed.py's bare forward pass, and checks they agree.

    python benchmarks/export_speed.py [--batch_size 32] [--model_name resnet_v1_50]

Writes an experiment root with random weights, JPEG files of Market-1501's size (128x64) and
runs export.py on it, in a temporary folder. Then alternates, in this one run, four ways to
embed one batch: the SavedModel's serve_jpeg on the encoded files (decode, resize, net),
serve_features and onnxruntime on model.onnx on the resized float batch, and embed.py's traced
forward pass on that batch. Each is reported by its fastest round, as timeit does: on a shared
machine the slower rounds are those another process interfered with.

Also prints the largest difference of each export from embed.py (serve_jpeg against
embed.compute_embeddings on the files; the others against the Keras model on the same batch),
relative to the largest embedding value.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import embed  # noqa: E402
import export  # noqa: E402
from model import build_model  # noqa: E402
from _bench import add_model_flags, describe, write_jpegs  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
add_model_flags(parser, batch_size=32)
parser.add_argument('--jpeg_height', type=common.positive_int, default=128,
                    help='Height of the JPEG files in pixels (Market-1501: 128).')
parser.add_argument('--jpeg_width', type=common.positive_int, default=64,
                    help='Width of the JPEG files in pixels (Market-1501: 64).')
parser.add_argument('--rounds', type=common.positive_int, default=5,
                    help='Alternating timed batches of each; the fastest is reported.')


def write_experiment(root: Path, model, args) -> None:
    """args.json and a train.py-style checkpoint of `model`, for export.py to read."""
    import tensorflow as tf
    root.mkdir()
    (root / 'args.json').write_text(json.dumps({
        'model_name': args.model_name, 'head_name': args.head_name,
        'embedding_dim': args.embedding_dim, 'net_input_height': args.height,
        'net_input_width': args.width}))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(root), None,
                               checkpoint_name='checkpoint').save(0)


def relative(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def load_exports(folder: Path):
    """The SavedModel, and an onnxruntime session on model.onnx (None without onnxruntime)."""
    import tensorflow as tf
    saved = tf.saved_model.load(str(folder / 'saved_model'))
    try:
        import onnxruntime
        return saved, onnxruntime.InferenceSession(str(folder / 'model.onnx'))
    except ImportError:
        print(f'onnxruntime: not timed, not installed ({export.INSTALL_HINT})')
        return saved, None


def main():
    args = parser.parse_args()
    import tensorflow as tf
    size = (args.height, args.width)
    model = build_model(args.model_name, args.head_name, args.embedding_dim)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_experiment(tmp / 'experiment', model, args)
        export.main(['--experiment_root', str(tmp / 'experiment'), '--output',
                     str(tmp / 'export'), '--quiet'])
        saved, session = load_exports(tmp / 'export')
        paths = write_jpegs(tmp, args.batch_size, args.jpeg_height, args.jpeg_width)
        jpegs = tf.constant([Path(path).read_bytes() for path in paths])
        # embed.py's embeddings of the files and its resized batch, as the other paths see it.
        want_files = embed.compute_embeddings(model, paths, size, size, False, None,
                                              args.batch_size)[:, 0]
        batch = tf.concat([embed.augment(common.read_image(path), size, size, False, None)
                           for path in paths], 0)

    forward = embed.forward_pass(model)
    runs = {
        'SavedModel serve_jpeg (bytes -> embeddings)':
            lambda: saved.signatures['serve_jpeg'](jpeg_bytes=jpegs)['embeddings'].numpy(),
        'SavedModel serve_features (float batch)':
            lambda: saved.signatures['serve_features'](images=batch)['embeddings'].numpy(),
        'embed.py bare forward pass (float batch)': lambda: forward(batch).numpy(),
    }
    if session is not None:
        float_batch = batch.numpy()
        runs['onnxruntime on model.onnx (float batch)'] = \
            lambda: session.run(['embeddings'], {'images': float_batch})[0]
    outputs = {name: run() for name, run in runs.items()}  # warm-up: traces, allocations
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    machine = describe()
    print(f'{args.model_name} + {args.head_name}, {size[0]}x{size[1]} net input, '
          f'{args.jpeg_height}x{args.jpeg_width} JPEG files, batch {args.batch_size}, '
          f'{args.rounds} rounds')
    keras_out = outputs['embed.py bare forward pass (float batch)']
    for name, seconds in times.items():
        want = want_files if 'serve_jpeg' in name else keras_out
        versus = 'embed.py on the files' if 'serve_jpeg' in name else 'Keras'
        rounds = ', '.join(f'{args.batch_size / t:.1f}' for t in seconds)
        print(f'{name:44s} {args.batch_size / min(seconds):7.1f} images/s  max |diff| vs '
              f'{versus}: {relative(outputs[name], want):.1e} of max |emb|  (rounds: {rounds})'
              f'  [{machine}]')


if __name__ == '__main__':
    main()
