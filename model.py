"""The embedding model: plug-in discovery, nets + head -> Keras model, TF1/slim checkpoints.

Keras and TensorFlow are imported inside the functions that need them, so that evaluate.py
can list its excluders without paying TensorFlow's ~3.5 s import.
"""
import inspect
import logging
import os
from importlib import import_module
from pathlib import Path

from common import InputError

ROOT = Path(__file__).resolve().parent
# --mixed_precision: `none` computes in float32; the others are Keras' mixed policies
# (`mixed_bfloat16`, `mixed_float16`): float32 variables, layers computing in the half type.
PRECISIONS = ('none', 'bfloat16', 'float16')
# The nets' options (nets/__init__.py): each flag's choices, and the value that builds the 2017
# net, which every net takes whether it has the option or not.
NET_OPTIONS = {'last_stride': ('--last_stride', (2, 1)),
               'pooling': ('--pooling', ('avg', 'max', 'gem')),
               'layout': ('--resnet_layout', ('slim', 'keras'))}
# Endpoints only training needs: the inference model (exports, embedding) leaves them out.
TRAINING_ENDPOINTS = ('logits', 'train_emb')


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
def takes(module, option: str) -> bool:
    """True if a plug-in's `endpoints` has the keyword argument `option`."""
    return option in inspect.signature(module.endpoints).parameters


def net_arguments(net, model_name: str, options: dict) -> dict:
    """The keyword arguments of nets/<model_name>.py for `options` (NET_OPTIONS keys).

    Raises:
        InputError: an unknown option or value, or a value other than the 2017 default for an
            option the net does not have (both named with their flag).
    """
    arguments = {}
    for option, value in options.items():
        if option not in NET_OPTIONS:
            raise InputError(f'unknown net option {option!r}; known: {", ".join(NET_OPTIONS)}')
        flag, choices = NET_OPTIONS[option]
        if value not in choices:
            raise InputError(f'{flag} {value!r}: choose from {", ".join(map(str, choices))}')
        if takes(net, option):
            arguments[option] = value
        elif value != choices[0]:
            raise InputError(f'{flag} {value}: nets/{model_name}.py has no such option')
    return arguments


def has_classifier(head_name: str) -> bool:
    """True if heads/<head_name>.py builds an identity classifier (its endpoints take
    `num_classes`), which the ID loss needs."""
    return takes(import_plugin('heads', head_name), 'num_classes')


def build_model(model_name: str, head_name: str, embedding_dim: int,
                mixed_precision: str = 'none', num_classes: int | None = None, **net_options):
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
        num_classes: the training identities, for a head with a classifier (has_classifier):
            it adds `logits` (B, num_classes). None: no classifier.
        **net_options: NET_OPTIONS (last_stride, pooling, layout), passed to nets that take
            them; the 2017 values are accepted by every net.

    Raises:
        InputError: an unknown name, a precision this machine cannot compute (check_precision),
            a net option the net lacks, num_classes for a head without a classifier, or a head
            whose `emb` is not float32 under the policy.
    """
    import keras
    net = import_plugin('nets', model_name)
    head = import_plugin('heads', head_name)
    if mixed_precision not in PRECISIONS:
        raise InputError(f'unknown mixed precision {mixed_precision!r}; choose from '
                         f'{", ".join(PRECISIONS)}')
    net_kwargs = net_arguments(net, model_name, net_options)
    head_kwargs = {}
    if num_classes is not None:
        if not takes(head, 'num_classes'):
            raise InputError(f'heads/{head_name}.py has no identity classifier (the ID loss '
                             'needs one, e.g. --head_name bnneck)')
        head_kwargs['num_classes'] = num_classes
    note = check_precision(mixed_precision)
    if note:
        logging.getLogger('triplet-reid').warning(note)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy('float32' if mixed_precision == 'none'
                                  else f'mixed_{mixed_precision}')
    try:
        images = keras.Input((None, None, 3), name='images')
        endpoints = head.endpoints(net.endpoints(images, **net_kwargs), embedding_dim,
                                   **head_kwargs)
    finally:
        keras.config.set_dtype_policy(previous)  # a global: later models are not affected
    for name in ('emb', 'train_emb', 'logits'):
        if name in endpoints and endpoints[name].dtype != 'float32':
            raise InputError(f'heads/{head_name}.py makes a {endpoints[name].dtype} `{name}` '
                             f'under --mixed_precision {mixed_precision}: its last layer needs '
                             "dtype='float32' (see heads/__init__.py)")
    return keras.Model(images, endpoints, name=f'{model_name}_{head_name}')


def inference_model(model):
    """The model without the endpoints only training uses (TRAINING_ENDPOINTS): the same
    layers and weights, but no classifier, so that exports do not carry it."""
    import keras
    outputs = {name: tensor for name, tensor in model.output.items()
               if name not in TRAINING_ENDPOINTS}
    if len(outputs) == len(model.output):
        return model
    return keras.Model(model.input, outputs, name=model.name)


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


# ----------------------------------------------------------------------------- Keras weights
HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
# keras.applications' ResNet layers: conv1_conv, conv1_bn, conv<stage>_block<unit>_<i>_conv/_bn
# with i = 0 the shortcut, 1-3 the bottleneck's convolutions (slim: shortcut, conv1-3).
_KERAS_RESNET = r'conv1_(conv|bn)|conv([2-5])_block(\d+)_([0-3])_(conv|bn)'
_SLIM_UNIT_PARTS = ('shortcut', 'conv1', 'conv2', 'conv3')
# The 2017-era keras.applications file of the same name called them conv1, bn_conv1,
# res2a_branch2a, bn2a_branch2a, ..., res2a_branch1 (the shortcut).
_OLD_KERAS_RESNET = r'(res|bn)([2-5])([a-z])_branch(2a|2b|2c|1)'
_OLD_PARTS = {'1': 0, '2a': 1, '2b': 2, '2c': 3}
# Layers of Keras' ImageNet classifier, which a file with the top holds; ignored.
_KERAS_TOP = ('predictions', 'fc1000', 'probs')
_KERAS_WEIGHTS = {'conv': ('kernel', 'bias'),
                  'bn': ('gamma', 'beta', 'moving_mean', 'moving_variance')}


def is_hdf5(path: str | os.PathLike) -> bool:
    """True if `path` is an HDF5 file (Keras weights), by its signature."""
    try:
        with open(path, 'rb') as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def read_keras_weights(path: str | os.PathLike) -> dict[str, dict]:
    """The weights of a Keras HDF5 file by layer name: {layer: {weight name: array}}.

    Reads Keras 2's format (what keras.applications downloads, e.g.
    resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5: attribute `layer_names`, each layer's
    `weight_names`; also under `model_weights` as in a whole-model .h5) and Keras 3's
    `.weights.h5` (groups `.../vars` named by their attribute `name`, the weights numbered in
    creation order: kernel, bias; gamma, beta, moving_mean, moving_variance). Weight names lose
    their layer prefix and `:0`.

    Raises:
        InputError: the file cannot be read as either format.
    """
    import h5py
    try:
        with h5py.File(path, 'r') as f:
            root = f['model_weights'] if 'model_weights' in f else f
            if 'layer_names' in root.attrs:
                return _read_keras2_weights(root)
            found = {}
            root.visititems(lambda name, item: _collect_keras3_layer(item, found))
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f'cannot read Keras weights {path}: {e}') from None
    if not found:
        raise InputError(f'{path} is an HDF5 file but holds no Keras weights (neither Keras 2 '
                         "`layer_names` nor Keras 3 `vars` groups with a layer `name`)")
    return found


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_keras2_weights(root) -> dict[str, dict]:
    layers = {}
    for layer in map(_text, root.attrs['layer_names']):
        names = [_text(n) for n in root[layer].attrs.get('weight_names', [])]
        layers[layer] = {n.split('/')[-1].removesuffix(':0'): root[layer][n][()] for n in names}
    return {name: weights for name, weights in layers.items() if weights}


def _collect_keras3_layer(item, found: dict) -> None:
    """Adds a Keras 3 `vars` group with weights to `found`, named by kind (conv or bn)."""
    import h5py
    if not (isinstance(item, h5py.Group) and item.name.endswith('/vars') and len(item)
            and 'name' in item.attrs):
        return
    layer = _text(item.attrs['name'])
    arrays = [item[str(i)][()] for i in range(len(item))]
    kind = 'bn' if layer.endswith('_bn') or layer.startswith('bn') else 'conv'
    found[layer] = dict(zip(_KERAS_WEIGHTS[kind], arrays, strict=False))


def keras_resnet_layer(name: str, scope: str) -> str | None:
    """Our layer for a keras.applications ResNet layer name (either naming), else None.

    E.g. `conv3_block2_1_conv` -> `resnet_v1_50.block2.unit_2.bottleneck_v1.conv1`,
    `conv1_bn` -> `resnet_v1_50.conv1.BatchNorm`.
    """
    import re
    name = {'conv1': 'conv1_conv', 'bn_conv1': 'conv1_bn'}.get(name, name)
    old = re.fullmatch(_OLD_KERAS_RESNET, name)
    if old:
        kind, stage, letter, branch = old.groups()
        name = (f'conv{stage}_block{ord(letter) - ord("a") + 1}_{_OLD_PARTS[branch]}_'
                f'{"conv" if kind == "res" else "bn"}')
    match = re.fullmatch(_KERAS_RESNET, name)
    if not match:
        return None
    if match[1]:
        return f'{scope}.conv1' + ('.BatchNorm' if match[1] == 'bn' else '')
    stage, unit, part, kind = match.groups()[1:]
    ours = (f'{scope}.block{int(stage) - 1}.unit_{unit}.bottleneck_v1.'
            f'{_SLIM_UNIT_PARTS[int(part)]}')
    return ours + ('.BatchNorm' if kind == 'bn' else '')


def load_keras_resnet(model, path: str | os.PathLike, log: logging.Logger | None = None) -> dict:
    """Loads keras.applications' ResNet weights (e.g. the ImageNet ResNet-50 file
    resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, or a `.weights.h5` saved from
    keras.applications.ResNet50) into the ResNet of `model`.

    The variables are the same as slim's, by the mapping of keras_resnet_layer. Keras' first
    convolution sees BGR images (its "caffe" preprocessing), ours RGB: its kernel's input
    channels are reversed. Keras' convolutions have biases and ours none: as batch norm follows
    each one, bias b is folded into the moving mean (mean - b), which leaves inference exact
    and training unchanged (training-mode batch norm removes any bias). With --resnet_layout
    keras the net then computes what keras.applications.ResNet50 computes; in slim's layout
    the strides sit elsewhere and the features differ until fine-tuned (logged).

    Returns:
        dict with lists of layer names: `loaded` (ours), `missing` (our variables the file
        cannot hold: head, GeM), `ignored` (Keras' ImageNet classifier, if present).

    Raises:
        InputError: the file is unreadable, holds no Keras ResNet, one of another depth or
            version (the first culprit named), or the model has no ResNet.
    """
    log = log or logging.getLogger('triplet-reid')
    weights = read_keras_weights(path)
    layers = {layer.name: layer for layer in model.layers}
    scope = next((name.split('.')[0] for name in layers
                  if name.startswith('resnet_v1') and name.endswith('.conv1')), None)
    if scope is None:
        raise InputError(f'{path} holds Keras ResNet weights, which fit only the ResNets '
                         f'(--model_name resnet_v1_50), not {model.name}')
    mapped, foreign, ignored = {}, [], []
    for name in weights:
        target = keras_resnet_layer(name, scope)
        if target is not None:
            mapped[target] = name
        else:
            (ignored if name in _KERAS_TOP else foreign).append(name)
    expected = ('the layers of keras.applications.ResNet50: conv1_conv, conv1_bn, '
                'conv2_block1_0_conv, ...')
    if not mapped:
        raise InputError(f'{path} holds no Keras ResNet: it has e.g. {_some(foreign, 3)}; '
                         f'expected {expected}')
    if foreign:
        raise InputError(f'{path} is not a Keras ResNet v1: it has {_some(foreign, 3)}; '
                         f'expected only {expected}')
    ours = {name for name, layer in layers.items() if name.startswith(f'{scope}.') and
            layer.weights}
    extra, lacking = sorted(set(mapped) - ours), sorted(ours - set(mapped))
    if extra or lacking:
        problem = (f'has {mapped[extra[0]]}, which {scope} lacks (a deeper ResNet?)' if extra
                   else f'lacks the weights of {lacking[0]} (a shallower ResNet?)')
        raise InputError(f'{path} does not fit {scope}: it {problem}')
    _assign_keras_resnet(layers, mapped, weights, scope, path)
    loaded = sorted(mapped)
    missing = sorted(slim_name(layer, variable) for layer in model.layers
                     if layer.name not in mapped for variable in layer.weights)
    log.info('loaded the %d layers of %s from Keras weights %s', len(loaded), scope, path)
    if missing:
        log.info('%d model variables are not in the file and keep their initial values: %s',
                 len(missing), _some(missing))
    if ignored:
        log.info("ignored Keras' ImageNet classifier: %s", ', '.join(ignored))
    if f'{scope}.pool1.pad' not in layers:
        log.warning('Keras strides in the first unit of a block, --resnet_layout slim in the '
                    "last: the features differ from Keras' until fine-tuning adapts them; "
                    "--resnet_layout keras computes exactly what Keras does")
    return {'loaded': loaded, 'missing': missing, 'ignored': ignored}


def _assign_keras_resnet(layers: dict, mapped: dict, weights: dict, scope: str, path) -> None:
    """Assigns the Keras weights `weights` to our `layers` by `mapped` (ours -> Keras')."""
    import numpy as np
    biases = {}
    for ours, theirs in mapped.items():
        layer, values = layers[ours], weights[theirs]
        required = _KERAS_WEIGHTS['bn'] if hasattr(layer, 'moving_mean') else ('kernel',)
        if not set(required) <= set(values):
            raise InputError(f'{path}: {theirs} has the weights {", ".join(values)}, expected '
                             f'{", ".join(required)}')
        if 'bias' in values:  # folded into the batch norm that follows
            biases[f'{ours}.BatchNorm'] = np.asarray(values['bias'], np.float64)
        for name in required:
            variable, value = getattr(layer, name), np.asarray(values[name])
            if name == 'kernel' and ours == f'{scope}.conv1':
                value = value[:, :, ::-1]  # BGR -> RGB input channels
            if tuple(value.shape) != tuple(variable.shape):
                raise InputError(f'{path} does not fit {scope}: {theirs}/{name} has shape '
                                 f'{tuple(value.shape)} there, {tuple(variable.shape)} in '
                                 f'{ours}')
            variable.assign(value.astype(variable.dtype))
    for ours, bias in biases.items():
        mean = layers[ours].moving_mean
        mean.assign((mean.numpy().astype(np.float64) - bias).astype(mean.dtype))


def check_initial_checkpoint(path: str | os.PathLike) -> None:
    """Raises InputError if `path` is neither a readable TF1 checkpoint nor Keras weights."""
    if is_hdf5(path):
        read_keras_weights(path)
    else:
        open_tf1_checkpoint(path)


def load_initial_checkpoint(model, path: str | os.PathLike,
                            log: logging.Logger | None = None) -> dict:
    """--initial_checkpoint: Keras ResNet weights (an HDF5 file) or a TF1 checkpoint.

    Returns and raises as load_keras_resnet and load_tf1_checkpoint.
    """
    if is_hdf5(path):
        return load_keras_resnet(model, path, log)
    return load_tf1_checkpoint(model, path, log)
