"""trinet_embed.py against an independent NumPy TriNet, on an npz written in Lasagne order."""
import math
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

import common
from conftest import ROOT, assert_close_float32
import trinet_embed

# From the issue (the paper's script): BGR order, subtracted after the float conversion.
MEAN_BGR = np.array([103.0626238, 115.90288257, 123.15163084], np.float32)
BLOCKS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # depth, units, first stride


# ----------------------------------------------------------------------------- the npz
def lasagne_params() -> list[tuple[str, tuple[int, ...]]]:
    """(kind, shape) in get_all_params order, written out again here: shortcut before main."""
    bn = ['beta', 'gamma', 'mean', 'inv_std']

    def conv_bn(c_in, c_out, k, bias=False):
        return [('W', (c_out, c_in, k, k))] + [(kind, (c_out,)) for kind in ['b'] * bias + bn]
    params = conv_bn(3, 64, 7, bias=True)
    c_in = 64
    for depth, units, _ in BLOCKS:
        for unit in range(units):
            if unit == 0:
                params += conv_bn(c_in, 4 * depth, 1)
            params += conv_bn(c_in, depth, 1) + conv_bn(depth, depth, 3)
            params += conv_bn(depth, 4 * depth, 1)
            c_in = 4 * depth
    return (params + [('W', (2048, 1024))] + [(kind, (1024,)) for kind in bn]
            + [('W', (1024, 128)), ('b', (128,))])


def random_arrays(seed: int = 0) -> list[np.ndarray]:
    """He-scaled kernels, batch norm (to be calibrated) near identity: finite, varied outputs."""
    rng = np.random.default_rng(seed)
    arrays = []
    for kind, shape in lasagne_params():
        if kind == 'W':
            fan_in = math.prod(shape[1:]) if len(shape) == 4 else shape[0]
            arrays.append(rng.normal(0, math.sqrt(2 / fan_in), shape))
        elif kind in ('gamma', 'inv_std'):
            arrays.append(rng.uniform(0.5, 1.5, shape))
        else:
            arrays.append(rng.normal(0, 0.2, shape))
    return [a.astype(np.float32) for a in arrays]


@pytest.fixture(scope='module')
def arrays():
    arrays = random_arrays()
    rng = np.random.default_rng(5)
    np_trinet(arrays, rng.integers(0, 256, (1, 256, 128, 3)) - MEAN_BGR, calibrate=rng)
    return arrays


@pytest.fixture(scope='module')
def npz_file(arrays, tmp_path_factory):
    path = tmp_path_factory.mktemp('trinet') / 'trinet-test.npz'
    np.savez(path, *arrays)  # keys arr_0 ... arr_272, as the paper's export
    return path


@pytest.fixture(scope='module')
def model(npz_file):
    return trinet_embed.build_model(trinet_embed.load_weights(npz_file))


# ----------------------------------------------------------------------------- NumPy TriNet
def np_conv(x, w, stride=1, pad=0):
    """Correlation (no flip) of (B, C, H, W) with a Lasagne (O, C, kh, kw) kernel, by im2col."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    o, c, kh, kw = w.shape
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    cols = np.stack([x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                     for i in range(kh) for j in range(kw)], axis=2)  # (B, C, kh*kw, oh, ow)
    out = np.tensordot(cols, w.reshape(o, c, kh * kw), axes=([1, 2], [1, 2]))  # (B, oh, ow, O)
    return out.transpose(0, 3, 1, 2)


def np_max_pool(x, k=3, s=2):
    """Theano ignore_border=False on (B, C, H, W): windows clipped at the bottom and right."""
    h, w = x.shape[2:]
    oh, ow = math.ceil((h - k) / s) + 1, math.ceil((w - k) / s) + 1
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * s:min(i * s + k, h), j * s:min(j * s + k, w)].max((2, 3))
    return out


def np_trinet(arrays, crops, calibrate=None):
    """(B, 256, 128, 3) BGR crops minus the mean -> (B, 128), in float64, channels first.

    With `calibrate` (a NumPy Generator), first overwrites each batch norm's mean and inv_std
    in `arrays` with values near the statistics of its input, as training leaves them: then
    every batch norm parameter moves the output as much as the kernels do.
    """
    position = 0

    def take():
        nonlocal position
        position += 1
        return np.float64(arrays[position - 1])

    def bn(x, last=False):  # Lasagne at test time: (x - mean) * inv_std * gamma + beta
        if calibrate is not None:
            if last:  # as in trained ResNets, a block's branch nudges its input, not replaces it
                arrays[position + 1] = np.float32(calibrate.uniform(0.1, 0.3, x.shape[1]))
            axes = (0, 2, 3) if x.ndim == 4 else (0,)
            mean, std = x.mean(axes), x.std(axes) + 1e-3
            if x.ndim == 2:  # 2 samples say little about one unit's spread: use all units'
                std = np.full_like(mean, x.std())
            noise = calibrate.normal(0, 0.2, mean.shape)
            arrays[position + 2] = np.float32(mean + noise * std)
            arrays[position + 3] = np.float32(calibrate.uniform(0.7, 1.3, std.shape) / std)
        beta, gamma, mean, inv_std = (take() for _ in range(4))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - mean.reshape(shape)) * (inv_std * gamma).reshape(shape) + beta.reshape(shape)

    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = crops.transpose(0, 3, 1, 2).astype(np.float64)
    x = np_conv(x, take(), stride=2, pad=3) + take()[None, :, None, None]
    x = np_max_pool(relu(bn(x)))
    for _, units, stride in BLOCKS:
        for unit in range(units):
            s = stride if unit == 0 else 1
            shortcut = bn(np_conv(x, take(), stride=s)) if unit == 0 else x
            y = relu(bn(np_conv(x, take(), stride=s)))
            y = relu(bn(np_conv(y, take(), pad=1)))
            y = bn(np_conv(y, take()), last=True)
            x = relu(shortcut + y)
    assert x.shape[2:] == (8, 4)
    x = relu(bn(x.mean((2, 3)) @ take()))
    x = x @ take() + take()
    assert position == len(arrays)
    return x


# ----------------------------------------------------------------------------- network
def test_layout_is_lasagne_order():
    layout = trinet_embed.param_layout()
    assert [shape for _, shape in layout] == [shape for _, shape in lasagne_params()]
    assert [name.split('.')[-1] for name, _ in layout] == [kind for kind, _ in lasagne_params()]
    assert len(layout) == 273 and len({name for name, _ in layout}) == 273


@pytest.mark.parametrize('size', [(7, 6), (8, 5), (9, 9)])
def test_max_pool_keeps_partial_border_windows(size):
    x = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32) - 1  # mostly < 0
    got = np.asarray(trinet_embed.max_pool_keep_border(x))
    want = np_max_pool(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    assert got.shape == (2, math.ceil((size[0] - 3) / 2) + 1, math.ceil((size[1] - 3) / 2) + 1, 3)
    np.testing.assert_array_equal(got, want)


def test_network_matches_numpy_reference(arrays, model):
    import tensorflow as tf
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (2, 256, 128, 3)).astype(np.float32) - MEAN_BGR
    want = np_trinet(arrays, crops)
    eager = np.asarray(model(crops, training=False))
    graph = tf.function(lambda x: model(x, training=False))(tf.constant(crops)).numpy()
    assert want.shape == (2, 128)
    assert np.abs(want[0] - want[1]).max() > 1e-3 * np.abs(want).max()  # inputs matter
    for got in eager, graph:
        assert_close_float32(got, want, model, reference_float64=True)


def test_shape_mismatch_names_first_bad_array(arrays, tmp_path):
    name, shape = trinet_embed.param_layout()[17]
    bad = arrays[:17] + [np.zeros((256,), np.float32)] + arrays[18:20]
    np.savez(tmp_path / 'bad.npz', *bad)
    with pytest.raises(common.InputError, match=rf'arr_17 has shape \(256,\) but {name} expects '
                                                rf'\({shape[0]},\)'):
        trinet_embed.load_weights(tmp_path / 'bad.npz')
    np.savez(tmp_path / 'short.npz', *arrays[:5])
    with pytest.raises(common.InputError, match=r'arr_5 is missing \(5 arrays, TriNet has 273\)'):
        trinet_embed.load_weights(tmp_path / 'short.npz')


# ----------------------------------------------------------------------------- images
def test_pickled_npz_is_refused_not_loaded(tmp_path):
    # An object array is stored as a pickle, which could run any code when loaded.
    np.savez(tmp_path / 'pickled.npz', np.array([{'evil': 1}], dtype=object))
    paths, _ = write_images(tmp_path, count=1)
    (tmp_path / 'files.txt').write_text(f'{paths[0]}\n')
    result = subprocess.run([sys.executable, str(ROOT / 'trinet_embed.py'), 'files.txt',
                             str(tmp_path / 'pickled.npz')], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert 'pickled.npz' in lines[0] and 'allow_pickle' in lines[0]


def test_ten_crops_geometry():
    # Blue = row / 2, green = column, red = a hash of both: every pixel says where it came from.
    y, x = np.mgrid[:288, :144]
    image = np.stack([y // 2, x, (y * 144 + x) % 251], axis=-1).astype(np.uint8)
    crops = trinet_embed.ten_crops(image)
    assert crops.shape == (10, 256, 128, 3) and crops.dtype == np.float32
    # centre, top-left, top-right, bottom-left, bottom-right; then each crop mirrored.
    tops_lefts = [(16, 8), (0, 0), (0, 16), (32, 0), (32, 16)]
    want = [image[t:t + 256, left:left + 128] for t, left in tops_lefts]
    want += [w[:, ::-1] for w in want]
    for i, w in enumerate(want):
        np.testing.assert_array_equal(crops[i], w.astype(np.float32) - MEAN_BGR, err_msg=f'{i}')


def test_resize_is_bilinear_on_uint8():
    image = np.random.default_rng(3).integers(0, 256, (100, 37, 3)).astype(np.uint8)
    resized = cv2.resize(image, (144, 288), interpolation=cv2.INTER_LINEAR)
    want = resized[16:272, 8:136].astype(np.float32) - MEAN_BGR
    np.testing.assert_array_equal(trinet_embed.ten_crops(image)[0], want)
    # Resizing floats instead rounds differently: the check above can tell the two apart.
    float_resized = cv2.resize(image.astype(np.float32), (144, 288))
    assert not np.array_equal(float_resized[16:272, 8:136] - MEAN_BGR, want)


# ----------------------------------------------------------------------------- command line
def write_images(folder, count=3):
    """PNG files (lossless) of known BGR content; the second one greyscale."""
    rng = np.random.default_rng(4)
    paths, bgrs = [], []
    for i in range(count):
        bgr = rng.integers(0, 256, (60 + 20 * i, 30 + 7 * i, 3)).astype(np.uint8)
        if i == 1:
            bgr[:] = bgr[..., :1]
        path = folder / f'img_{i}.png'
        cv2.imwrite(str(path), bgr[..., 0] if i == 1 else bgr)
        paths.append(str(path))
        bgrs.append(bgr)
    return paths, bgrs


def test_csv_and_h5_output(npz_file, model, tmp_path, capsys):
    paths, bgrs = write_images(tmp_path)
    (tmp_path / 'files.txt').write_text(f'{paths[0]}\n\n{paths[1]}\n{paths[2]}\n')
    h5_file = tmp_path / 'emb.h5'
    assert trinet_embed.main([str(tmp_path / 'files.txt'), str(npz_file), '--h5', str(h5_file),
                              '--batch_size', '2']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(',')[0] for line in lines] == paths
    csv_embs = np.array([[float(v) for v in line.split(',')[1:]] for line in lines], np.float32)
    assert csv_embs.shape == (3, 128)
    # Expected: the model on the 10 crops of the BGR pixels that were written, averaged.
    want = np.stack([np.asarray(model(trinet_embed.ten_crops(b))).mean(0) for b in bgrs])
    assert_close_float32(csv_embs, want, model)  # batches of 20 crops, not 10: other kernels
    # str() of a float32 round-trips: the HDF5 file holds the very same numbers, in file order.
    np.testing.assert_array_equal(common.load_embeddings(h5_file), csv_embs)
    with h5py.File(h5_file, 'r') as f:
        np.testing.assert_array_equal(f['embs'][()], csv_embs)
    assert not list(tmp_path.glob('emb.h5.tmp*'))


def test_unreadable_image_is_named(npz_file, tmp_path, capsys):
    paths, _ = write_images(tmp_path, count=1)
    (tmp_path / 'broken.jpg').write_bytes(b'this is no image')
    (tmp_path / 'files.txt').write_text(f'{paths[0]}\n{tmp_path / "broken.jpg"}\n')
    with pytest.raises(SystemExit) as exit_info:
        common.run(lambda: trinet_embed.main([str(tmp_path / 'files.txt'), str(npz_file)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert 'broken.jpg (line 2)' in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1


def test_streams_until_an_image_does_not_decode(npz_file, tmp_path, capsys):
    paths, _ = write_images(tmp_path, count=2)
    # The signature passes the check up front; the data only fails when the batch is read.
    (tmp_path / 'cut.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
    (tmp_path / 'files.txt').write_text(f'{paths[0]}\n{paths[1]}\n{tmp_path / "cut.png"}\n')
    h5_file = tmp_path / 'emb.h5'
    with pytest.raises(common.InputError, match=r'cannot read image .*cut\.png \(line 3 of '):
        trinet_embed.main([str(tmp_path / 'files.txt'), str(npz_file), '--h5', str(h5_file),
                           '--batch_size', '2'])
    # The first batch was printed before the second was read; no partial HDF5 file is left.
    assert [line.split(',')[0] for line in capsys.readouterr().out.splitlines()] == paths
    assert not h5_file.exists() and not list(tmp_path.glob('emb.h5.tmp*'))


@pytest.mark.parametrize('argv', [[], ['files.txt'], ['a', 'b', '--batch_size', '0']])
def test_usage_error_exits_1(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        trinet_embed.main(argv)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith('usage:')
