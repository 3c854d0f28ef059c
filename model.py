"""The embedding model: plug-in discovery, nets + head -> Keras model, TF1/slim checkpoints.

Keras and TensorFlow are imported inside the functions that need them, so that evaluate.py
can list its excluders without paying TensorFlow's ~3.5 s import.
"""
import logging
import os
from importlib import import_module
from pathlib import Path

from common import InputError

ROOT = Path(__file__).resolve().parent
# --mixed_precision: `none` computes in float32; the others are Keras' mixed policies
# (`mixed_bfloat16`, `mixed_float16`): float32 variables, layers computing in the half type.
PRECISIONS = ('none', 'bfloat16', 'float16')


# ----------------------------------------------------------------------------- plug-ins
def plugin_names(folder: str) -> list[str]:
    """The modules in `folder` (nets, heads, excluders): the valid --choices, found by scanning."""
    return sorted(p.stem for p in (ROOT / folder).glob('*.py') if not p.stem.startswith('_'))


def import_plugin(folder: str, name: str):
    """Imports `folder/name.py` by name; an unknown name is an InputError listing the choices."""
    if name not in plugin_names(folder):
        raise InputError(f'unknown {folder} module {name!r}; '
                         f'choose from {", ".join(plugin_names(folder))}')
    return import_module(f'{folder}.{name}')


# ----------------------------------------------------------------------------- precision
# oneDNN's instruction sets below AVX-512 (ONEDNN_MAX_CPU_ISA values), and those of AVX-512 that
# lack its bfloat16 instructions.
_BELOW_AVX512 = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2')
_WITHOUT_BF16 = ('AVX512_CORE', 'AVX512_CORE_VNNI')


def cpu_bfloat16() -> str:
    """How TensorFlow's CPU kernels (oneDNN) compute bfloat16 on this machine.

    Returns:
        `native` (AVX512_BF16 or AMX: faster than float32), `emulated` (AVX-512 without them:
        about 3x slower than float32 on a Zen 4 limited to AVX512_CORE), `none` (no AVX-512,
        or oneDNN limited below it by ONEDNN_MAX_CPU_ISA: there bfloat16 convolutions abort and
        matrix products crash the process, so nothing may be tried) or `unknown` (no
        /proc/cpuinfo to tell).
    """
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line.split(':', 1)[1].split() for line in f
                          if line.startswith('flags')), None)
    except OSError:
        flags = None
    if flags is None:
        return 'unknown'
    limit = os.environ.get('ONEDNN_MAX_CPU_ISA', '').upper()
    if not {'avx512f', 'avx512bw', 'avx512vl', 'avx512dq'} <= set(flags) or limit in _BELOW_AVX512:
        return 'none'
    if not {'avx512_bf16', 'amx_bf16'} & set(flags) or limit in _WITHOUT_BF16:
        return 'emulated'
    return 'native'


def computes_bfloat16_on_gpu() -> bool:
    """True if TensorFlow sees a GPU, which then computes bfloat16 rather than the CPU."""
    import tensorflow as tf
    return bool(tf.config.list_physical_devices('GPU'))


def check_precision(mixed_precision: str) -> str | None:
    """Refuses a precision this machine cannot compute, before anything is built with it.

    Args:
        mixed_precision: one of PRECISIONS. Only bfloat16 on a machine without a GPU is
            checked: float16 runs on every CPU (slowly: it has no float16 arithmetic).

    Returns:
        A warning to log where bfloat16 is emulated, else None.

    Raises:
        InputError: bfloat16 on a CPU whose kernels have no bfloat16 (cpu_bfloat16 `none`).
    """
    if mixed_precision != 'bfloat16' or computes_bfloat16_on_gpu():
        return None
    support = cpu_bfloat16()
    if support == 'none':
        raise InputError('--mixed_precision bfloat16: this CPU has no AVX-512 (or '
                         'ONEDNN_MAX_CPU_ISA limits TensorFlow to less), without which '
                         "TensorFlow's CPU kernels cannot compute bfloat16; use "
                         '--mixed_precision none, or a GPU')
    if support == 'emulated':
        return ('bfloat16 is emulated on this CPU (AVX-512 without AVX512_BF16): expect it '
                'slower than float32')
    return None


# ----------------------------------------------------------------------------- model
def build_model(model_name: str, head_name: str, embedding_dim: int,
                mixed_precision: str = 'none'):
    """The embedding model: nets/<model_name>.py followed by heads/<head_name>.py.

    The model takes float32 RGB images (B, H, W, 3) with values in [0, 255], any H and W
    (the backbone does its own preprocessing), and returns the dict of named endpoints that
    the net and head produce; `endpoints['emb']` is the (B, embedding_dim) float32 embedding.

    Args:
        model_name, head_name: modules of nets/ and heads/.
        embedding_dim: D.
        mixed_precision: one of PRECISIONS. The net and head are built under that Keras
            dtype policy, which is then set back: the variables are float32 in every case (so
            checkpoints do not depend on it), and the head's last layers compute in float32.

    Raises:
        InputError: an unknown name, a precision this machine cannot compute (check_precision),
            or a head whose `emb` is not float32 under the policy.
    """
    import keras
    net = import_plugin('nets', model_name)
    head = import_plugin('heads', head_name)
    if mixed_precision not in PRECISIONS:
        raise InputError(f'unknown mixed precision {mixed_precision!r}; choose from '
                         f'{", ".join(PRECISIONS)}')
    note = check_precision(mixed_precision)
    if note:
        logging.getLogger('triplet-reid').warning(note)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy('float32' if mixed_precision == 'none'
                                  else f'mixed_{mixed_precision}')
    try:
        images = keras.Input((None, None, 3), name='images')
        endpoints = head.endpoints(net.endpoints(images), embedding_dim)
    finally:
        keras.config.set_dtype_policy(previous)  # a global: later models are not affected
    if endpoints['emb'].dtype != 'float32':
        raise InputError(f'heads/{head_name}.py makes a {endpoints["emb"].dtype} `emb` under '
                         f'--mixed_precision {mixed_precision}: its last layer needs '
                         "dtype='float32' (see heads/__init__.py)")
    return keras.Model(images, endpoints, name=f'{model_name}_{head_name}')


# ----------------------------------------------------------------------------- TF1 checkpoints
def slim_name(layer, variable) -> str:
    """The TF1/slim checkpoint name of a Keras variable, by a rule on the names we choose.

    Keras 3 forbids '/' in layer names, so our layers use '.' where slim's scopes use '/';
    Keras' variable names map to slim's: kernel -> weights (depthwise_weights for a depthwise
    conv), bias -> biases; batch norm's gamma, beta, moving_mean, moving_variance stay.
    E.g. layer `resnet_v1_50.conv1.BatchNorm`, variable `gamma` ->
    `resnet_v1_50/conv1/BatchNorm/gamma`.
    """
    import keras
    name = variable.name.split('/')[-1]
    if name == 'kernel':
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        name = 'depthwise_weights' if depthwise else 'weights'
    elif name == 'bias':
        name = 'biases'
    return layer.name.replace('.', '/') + '/' + name


def _some(names: list[str], limit: int = 6) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f', ... ({len(names) - limit} more)' if len(names) > limit else '')


def load_tf1_checkpoint(model, path: str | os.PathLike, log: logging.Logger | None = None) -> dict:
    """Loads a TF1 (slim-named) checkpoint into a model by variable name.

    Reads the old single-file "V1" format (e.g. slim's published resnet_v1_50.ckpt) and V2
    (`prefix.index` + `prefix.data-*`; give the prefix, either file, or a folder with a
    `checkpoint` file, such as a 2017 experiment root). Variables the model lacks (ImageNet
    logits, Adam slots, global_step) are ignored; model variables the checkpoint lacks keep
    their initial values (expected for a head on an ImageNet checkpoint). Both are logged.

    Args:
        model: a Keras model whose variables follow `slim_name`.
        path: the checkpoint.
        log: where the summary goes; the project's logger if None.

    Returns:
        dict with lists of slim names: `loaded` (assigned), `missing` (model variables not in
        the checkpoint) and `ignored` (checkpoint variables not in the model).

    Raises:
        InputError: unreadable checkpoint, or one of another architecture: nothing matches, a
            shape differs, or a scope of the model is in the checkpoint only in part (the
            first culprit is named).
    """
    import tensorflow as tf
    log = log or logging.getLogger('triplet-reid')
    path, reader = open_tf1_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    variables = {slim_name(layer, variable): variable
                 for layer in model.layers for variable in layer.weights}
    loaded, missing, ignored = _match_checkpoint(shapes, variables, path, model.name)
    try:
        for name in loaded:
            variables[name].assign(reader.get_tensor(name).astype(variables[name].dtype))
    except (IndexError, ValueError, tf.errors.OpError) as e:  # data cut short or overwritten
        raise InputError(f'cannot read {name} from checkpoint {path}: {e}') from None
    log.info('loaded %d of the model\'s %d variables from %s', len(loaded), len(variables), path)
    if missing:
        log.info('%d model variables are not in the checkpoint and keep their initial values: '
                 '%s', len(missing), _some(missing))
    if ignored:
        log.info('ignored %d checkpoint variables that the model lacks: %s', len(ignored),
                 _some(ignored))
    return {'loaded': loaded, 'missing': missing, 'ignored': ignored}


def open_tf1_checkpoint(path: str | os.PathLike):
    """(prefix, reader) of a TF1 checkpoint given as its prefix, either file, or a folder.

    Raises:
        InputError: the checkpoint cannot be read (missing, damaged, not a checkpoint).
    """
    import tensorflow as tf
    path = str(path)
    for suffix in ('.index', '.meta'):
        path = path.removesuffix(suffix)
    if '.data-' in Path(path).name:
        path = path[:path.rindex('.data-')]
    try:
        return path, tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError, IndexError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f'cannot read checkpoint {path}: {message}') from None


def _match_checkpoint(shapes: dict, variables: dict, path: str,
                      model_name: str) -> tuple[list[str], list[str], list[str]]:
    """Sorted (loaded, missing, ignored) slim names of a checkpoint's `shapes` against the
    model's `variables`; raises InputError where the checkpoint is of another architecture."""
    ignored = sorted(set(shapes) - set(variables))
    missing = sorted(set(variables) - set(shapes))
    loaded = sorted(set(variables) & set(shapes))
    if not loaded:
        hint = (' (a TF2 object checkpoint: use train.py --resume, or embed.py, on its '
                'experiment root)' if any('.ATTRIBUTES' in name for name in shapes) else '')
        raise InputError(f'checkpoint {path} holds none of the variables of model {model_name}'
                         f'{hint}: it has e.g. {_some(sorted(shapes), 3)}; the model expects e.g. '
                         f'{_some(sorted(variables), 3)}')
    # A scope that is in the checkpoint at all must be there in full: a partial match means
    # another architecture (e.g. other block sizes), not a head that was never trained.
    scopes = {name.split('/')[0] for name in shapes}
    partial = [name for name in missing if name.split('/')[0] in scopes]
    if partial:
        raise InputError(f'checkpoint {path} does not fit model {model_name}: it lacks '
                         f'{len(partial)} variables of the model, e.g. {_some(partial, 3)}')
    for name, variable in variables.items():  # model order: the culprit nearest the input
        if name in shapes and tuple(shapes[name]) != tuple(variable.shape):
            raise InputError(f'checkpoint {path} does not fit model {model_name}: {name} has '
                             f'shape {tuple(shapes[name])} there, {tuple(variable.shape)} in '
                             f'the model')
    return loaded, missing, ignored
