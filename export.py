#!/usr/bin/env python3
"""Exports a trained embedding as a TensorFlow SavedModel and an ONNX file, for serving.

    python export.py --experiment_root ~/experiments/market1501 \\
        --output ~/experiments/market1501/export [--checkpoint checkpoint-25000] [--flip_augment]

Writes into --output, which must not exist or be empty (unless --overwrite):

    saved_model/    signatures serve_images (uint8 RGB batch, any size), serve_jpeg (encoded
                    JPEG/PNG bytes) and serve_features (float images of the net's input size);
                    decoding, resizing as embed.py does and the net's preprocessing are inside
    model.onnx      the float input of serve_features (NHWC, RGB, 0..255, any batch size)
    signature.json  inputs, outputs, sizes, colour order, value range, the training args
    README.txt      the same in prose, with usage examples

Everything is written to a temporary sibling folder that is renamed into place at the end,
so that a failed or interrupted export leaves nothing behind. model.onnx needs the packages
of requirements-export.txt; without them the rest is written.
"""
import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import common
import embed
import experiment

# TensorFlow versions of the aggregators/ that --flip_augment can bake in, on (B, A, D)
# embeddings; the aggregator plug-ins are NumPy only and cannot go into a graph.
AGGREGATORS = ('mean', 'normalized_mean')
ONNX_OPSET = 17  # supported by tf2onnx 1.17 and by every onnxruntime since 1.11
INSTALL_HINT = 'pip install -r requirements-export.txt'
parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument(
    '--experiment_root', required=True,
    help='Folder of the trained experiment: its args.json and checkpoints are read.')
parser.add_argument(
    '--output', required=True,
    help='Folder to write the export to; must not exist or be empty, unless --overwrite. Its '
         'parent folder must exist.')
parser.add_argument(
    '--checkpoint', default=None,
    help='Checkpoint to export, e.g. checkpoint-20000, relative to --experiment_root unless '
         'absolute. Default: the latest one.')
parser.add_argument(
    '--overwrite', action='store_true',
    help='Replace the contents of a non-empty --output (only once the new export is complete).')
parser.add_argument(
    '--flip_augment', action='store_true',
    help='Bake the flip averaging of embed.py --flip_augment into every signature and the ONNX '
         'file: each image and its mirror image are embedded and combined by --aggregator.')
parser.add_argument(
    '--aggregator', choices=AGGREGATORS, default=None,
    help='With --flip_augment: `mean` (models trained with a euclidean loss) or '
         '`normalized_mean` (`_normalize` heads), as in embed.py.')
parser.add_argument(
    '--quiet', action='store_true', help='Print only warnings and errors.')
group = parser.add_argument_group(
    'model settings', 'Default: the value in the experiment\'s args.json.')
experiment.add_model_flags(group, dict.fromkeys(experiment.MODEL_SETTINGS))


# ----------------------------------------------------------------------------- helpers
def check_output(output: Path, root: Path, overwrite: bool) -> None:
    """Refuses an output that would lose data or cannot be written, before any work is done."""
    if output.exists() and not output.is_dir():
        raise common.InputError(f'--output {output} is a file, not a folder')
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise common.InputError(f'--output {output} exists and is not empty; add --overwrite '
                                'to replace it')
    if not output.parent.is_dir():
        raise common.InputError(f'--output {output}: the folder {output.parent} does not exist')
    resolved, root = output.resolve(), root.resolve()
    if resolved == root or resolved in root.parents:  # --overwrite would delete the experiment
        raise common.InputError(f'--output {output} would replace the experiment root {root}')


def aggregate(emb_aug, name: str):
    """(B, A, D) -> (B, D) as aggregators/<name>.py does (in float32, not float64)."""
    import tensorflow as tf
    emb = tf.reduce_mean(emb_aug, axis=1)
    if name == 'normalized_mean':  # the same 1e-12 floor as aggregators/normalized_mean.py
        emb = emb / tf.maximum(tf.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def serving_module(model, net_size: tuple[int, int], flip: bool, aggregator: str | None,
                   legacy_resize: bool):
    """A tf.Module holding the model and the three serving functions (see the module docstring).

    Each returns {'embeddings': (B, D)} and, for heads whose `emb` differs from `emb_raw` (the
    `_normalize` heads: `embeddings` is on the unit sphere, as embed.py writes it), also
    `embeddings_raw`, the head's output before normalisation.
    """
    import tensorflow as tf
    height, width = net_size
    count = 2 if flip else 1  # inputs per image, in embed.augmentation_types order
    with_raw = model.output['emb'] is not model.output['emb_raw']

    def embed_inputs(inputs):  # (B, count, h, w, 3) float32 -> outputs
        endpoints = model(tf.reshape(inputs, (-1, height, width, 3)), training=False)
        outputs = {'embeddings': endpoints['emb']}
        if with_raw:
            outputs['embeddings_raw'] = endpoints['emb_raw']
        for key, emb in outputs.items():
            emb = tf.reshape(emb, (-1, count, emb.shape[-1]))
            outputs[key] = aggregate(emb, aggregator if key == 'embeddings' else 'mean') \
                if flip else emb[:, 0]
        return outputs

    def prepare(image):  # uint8 (H, W, 3) -> (count, h, w, 3): exactly embed.py's pixels
        return embed.augment(image, net_size, net_size, flip, None, legacy_resize)

    spec = tf.TensorSpec((count, height, width, 3), tf.float32)
    module = tf.Module()
    module.model = model  # tracks the variables

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8, name='images')])
    def serve_images(images):
        return embed_inputs(tf.map_fn(prepare, images, fn_output_signature=spec))

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.string, name='jpeg_bytes')])
    def serve_jpeg(jpeg_bytes):
        return embed_inputs(tf.map_fn(lambda data: prepare(common.decode_image(data)),
                                      jpeg_bytes, fn_output_signature=spec))

    @tf.function(input_signature=[tf.TensorSpec((None, height, width, 3), tf.float32,
                                                name='images')])
    def serve_features(images):
        inputs = tf.stack([images, tf.reverse(images, [2])], 1) if flip else images[:, None]
        return embed_inputs(inputs)

    module.serve_images, module.serve_jpeg = serve_images, serve_jpeg
    module.serve_features = serve_features
    return module


def write_onnx(function, path: Path, log: logging.Logger) -> bool:
    """Converts a serving function to ONNX with tf2onnx and checks it; False without tf2onnx."""
    try:
        import onnx
        import tf2onnx
    except ImportError as e:
        log.warning('model.onnx not written: %s is not installed (%s)', e.name, INSTALL_HINT)
        return False
    import tensorflow as tf
    logging.getLogger('tf2onnx').setLevel(logging.ERROR)  # it logs every graph rewrite
    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                             opset=ONNX_OPSET)
    # tf2onnx 1.17 makes every tensor the function captures an input of the ONNX graph, not
    # only variables: ResNet's RGB means would have to be fed by the caller. They become
    # initializers (constants) here.
    concrete = function.get_concrete_function()
    captured = {inner.name: outer for inner, outer in
                zip(concrete.graph.internal_captures, concrete.captured_inputs, strict=True)
                if inner.dtype != tf.resource}
    for graph_input in list(proto.graph.input):
        if graph_input.name in captured:
            value = captured[graph_input.name].numpy()
            proto.graph.initializer.append(onnx.numpy_helper.from_array(value, graph_input.name))
            proto.graph.input.remove(graph_input)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return True


def signature(args: argparse.Namespace, checkpoint: Path, tf1: bool, trained: dict,
              outputs: list[str], onnx_written: bool) -> dict:
    """The content of signature.json: everything a service needs to call the export."""
    height, width = args.net_input_height, args.net_input_width
    image = {'dtype': 'uint8', 'colour_order': 'RGB', 'value_range': [0, 255]}
    features = {'name': 'images', 'dtype': 'float32', 'shape': [None, height, width, 3],
                'layout': 'NHWC', 'colour_order': 'RGB', 'value_range': [0, 255]}
    emb = {'dtype': 'float32', 'shape': [None, args.embedding_dim]}
    returned = {name: emb for name in outputs}
    resize = ('bilinear without half-pixel centres (TensorFlow 1 resize_images, as the 2017 '
              'code trained)' if tf1 else 'bilinear with half-pixel centres (tf.image.resize)')
    return {
        'model_name': args.model_name, 'head_name': args.head_name,
        'embedding_dim': args.embedding_dim, 'net_input_size': [height, width],
        'checkpoint': str(checkpoint),
        'checkpoint_format': 'TensorFlow 1 (2017 code)' if tf1 else 'TensorFlow 2',
        'flip_augment': args.flip_augment, 'aggregator': args.aggregator, 'resize': resize,
        'saved_model': {'path': 'saved_model', 'signatures': {
            'serve_images': {'inputs': {'images': {**image, 'shape': [None, None, None, 3]}},
                             'outputs': returned},
            'serve_jpeg': {'inputs': {'jpeg_bytes': {
                'dtype': 'string', 'shape': [None],
                'content': 'encoded JPEG or PNG files, colour or greyscale, any size'}},
                'outputs': returned},
            'serve_features': {'inputs': {'images': features}, 'outputs': returned}}},
        'onnx': {'path': 'model.onnx', 'opset': ONNX_OPSET, 'inputs': [features],
                 'outputs': [{'name': name, **emb} for name in outputs]}
        if onnx_written else None,
        'training_args': trained,
    }


def readme(info: dict) -> str:
    """README.txt: signature.json in prose, with usage examples for TensorFlow and onnxruntime."""
    height, width = info['net_input_size']
    outputs = ', '.join(info['saved_model']['signatures']['serve_jpeg']['outputs'])
    flip = (f'Each image and its mirror image are embedded and combined by {info["aggregator"]} '
            '(--flip_augment).' if info['flip_augment'] else 'No test-time augmentation.')
    onnx = (f"""model.onnx (opset {info['onnx']['opset']}) takes input `images`, float32
(B, {height}, {width}, 3) as serve_features does, and returns {outputs}.""" if info['onnx']
            else f'model.onnx was not written: install the packages ({INSTALL_HINT}) and export '
                 'again.')
    return f"""Embedding model exported by triplet-reid's export.py
{info['model_name']} + {info['head_name']}, {info['embedding_dim']}-D embeddings, net input \
{height}x{width} (height x width), from {info['checkpoint']}.

saved_model/ (TensorFlow only; this project is not needed) has three signatures. Each
returns {outputs}: `embeddings`, float32 (B, {info['embedding_dim']}), are those that
embed.py computes; `embeddings_raw`, where present, is the head's output before its
normalisation onto the unit sphere.
- serve_images: `images`, uint8 (B, H, W, 3), RGB, 0..255, any H and W (one size per call).
  Each image is resized to {height}x{width}, {info['resize']}.
- serve_jpeg: `jpeg_bytes`, a 1-D string tensor of encoded JPEG or PNG files, decoded with
  tf.io.decode_image (colour or greyscale) and resized as above.
- serve_features: `images`, float32 (B, {height}, {width}, 3), RGB, 0..255, already resized.
The net's own normalisation (mean subtraction or scaling) happens inside: do not normalise.
{flip}

    import tensorflow as tf
    model = tf.saved_model.load('saved_model')
    files = [open(f, 'rb').read() for f in ['a.jpg', 'b.jpg']]
    embs = model.signatures['serve_jpeg'](jpeg_bytes=tf.constant(files))['embeddings']
    embs = model.signatures['serve_images'](images=uint8_batch)['embeddings']

{onnx}

    import numpy as np
    import onnxruntime
    session = onnxruntime.InferenceSession('model.onnx')
    batch = np.zeros((4, {height}, {width}, 3), np.float32)  # RGB, 0..255, resized
    embs = session.run(['embeddings'], {{'images': batch}})[0]

signature.json says the same for programs, with the training arguments (args.json).
"""


def write_export(folder: Path, module, args: argparse.Namespace, checkpoint: Path, tf1: bool,
                 trained: dict, log: logging.Logger) -> None:
    """Writes saved_model/, model.onnx, signature.json and README.txt into `folder`."""
    import tensorflow as tf
    signatures = {name: getattr(module, name)
                  for name in ('serve_images', 'serve_jpeg', 'serve_features')}
    tf.saved_model.save(module, str(folder / 'saved_model'), signatures=signatures)
    onnx_written = write_onnx(module.serve_features, folder / 'model.onnx', log)
    outputs = list(module.serve_features.get_concrete_function().structured_outputs)
    info = signature(args, checkpoint, tf1, trained, outputs, onnx_written)
    (folder / 'signature.json').write_text(json.dumps(info, indent=2) + '\n')
    (folder / 'README.txt').write_text(readme(info))


def install(folder: Path, output: Path) -> None:
    """Puts the finished `folder` in the place of `output`, replacing it (renames only)."""
    old = output.with_name(f'{output.name}.old-{os.getpid()}')
    if output.exists():
        os.rename(output, old)
    os.rename(folder, output)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- reading back
def read_signature(folder: str | os.PathLike) -> dict:
    """signature.json of an export folder.

    Raises:
        InputError: the folder is no export of this script, or the file is damaged.
    """
    path = Path(folder) / 'signature.json'
    if not path.is_file():
        raise common.InputError(f'{folder} is not an export (no signature.json; export.py '
                                'writes one)')
    try:
        info = json.loads(common.read_text(path, 'export signature'))
    except (ValueError, RecursionError) as e:
        raise common.InputError(f'cannot read {path}: {e}') from None
    if not isinstance(info, dict) or 'embedding_dim' not in info:
        raise common.InputError(f'{path} is not an export signature')
    return info


def load_embedder(folder: str | os.PathLike):
    """A function from encoded JPEG/PNG files to their float32 (B, D) embeddings through the
    export's SavedModel (serve_jpeg): what a service runs, without this project's model code.

    The function takes (datas: list[bytes], names: list[str]) and raises an InputError naming
    the first file that cannot be decoded; it is safe to call from several threads.
    """
    import numpy as np
    import tensorflow as tf
    path = Path(folder) / 'saved_model'
    try:
        serve = tf.saved_model.load(str(path)).signatures['serve_jpeg']
    except (OSError, ValueError, KeyError, tf.errors.OpError) as e:
        raise common.InputError(f'cannot load the SavedModel {path}: '
                                f'{str(e).strip().splitlines()[0]}') from None

    def embed_files(datas: list[bytes], names: list[str]) -> np.ndarray:
        try:
            return serve(jpeg_bytes=tf.constant(datas))['embeddings'].numpy()
        except tf.errors.InvalidArgumentError as e:
            for data, name in zip(datas, names, strict=True):  # which one: each alone
                try:
                    serve(jpeg_bytes=tf.constant([data]))
                except tf.errors.InvalidArgumentError as one:
                    raise common.InputError(f'cannot decode image {name}: '
                                            f'{one.message.strip().splitlines()[0]}') from None
            raise common.InputError(f'cannot embed the images: {e.message}') from None
    return embed_files


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parser.parse_args(argv)
    log = common.setup_logging(quiet=args.quiet)
    root = Path(args.experiment_root).expanduser()
    output = Path(args.output).expanduser()
    if not root.is_dir():
        raise common.InputError(f'experiment root {root} is not a folder')
    if args.flip_augment != (args.aggregator is not None):
        raise common.InputError('--flip_augment needs --aggregator (mean or normalized_mean), '
                                'and --aggregator needs --flip_augment')

    # Settings and files, checked before TensorFlow's import: the command line wins over
    # args.json.
    args.crop_augment = args.image_root = None  # embed.py's flags, read by model_settings
    args.mixed_precision = 'none'  # exports compute in float32, whatever the training used
    trained = embed.model_settings(args, root)
    checkpoint = experiment.find_checkpoint(root, args.checkpoint)
    check_output(output, root, args.overwrite)

    # Model.
    checkpoint = checkpoint or experiment.latest_checkpoint(root)
    tf1 = experiment.is_tf1_checkpoint(checkpoint)
    from model import build_model, inference_model
    model = build_model(args.model_name, args.head_name, args.embedding_dim,
                        **experiment.model_options(args))
    experiment.restore_model(model, checkpoint, args.embedding_dim, tf1, log)
    model = inference_model(model)  # the export holds no classifier (--id_loss_weight)
    net_size = (args.net_input_height, args.net_input_width)
    module = serving_module(model, net_size, args.flip_augment, args.aggregator,
                            legacy_resize=tf1)  # 2017 roots: TF1's resize, as embed.py does

    # Export, into a temporary sibling folder renamed into place when complete.
    folder = output.with_name(f'{output.name}.tmp-{os.getpid()}')
    try:
        folder.mkdir()
        write_export(folder, module, args, checkpoint, tf1, trained, log)
        install(folder, output)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info('exported %s from %s to %s', model.name, checkpoint, output)


if __name__ == '__main__':
    common.run(main)
