"""What the benchmarks share: the machine a figure came from, printed beside every figure
(speeds differ by ~3.5x between the CPUs of one machine kind, AVX-512 or only AVX2, so a figure
without its CPU says little), the model flags, and JPEG files to read."""
import os
import platform
from pathlib import Path


def describe() -> str:
    """E.g. `AMD EPYC, 2 cores, AVX-512` or `..., AVX2 only (oneDNN limited to AVX2)`."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name':
                    model = value.strip()
                elif key.strip() == 'flags':
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:  # not Linux: the model name from platform, no flags
        pass
    isa = 'AVX-512' if 'avx512f' in flags else 'AVX2 only' if 'avx2' in flags else 'no AVX2'
    limit = os.environ.get('ONEDNN_MAX_CPU_ISA')
    if limit:  # oneDNN then runs the kernels of that instruction set whatever the CPU has
        isa += f' (oneDNN limited to {limit})'
    return f'{model}, {len(os.sched_getaffinity(0))} cores, {isa}'


def add_model_flags(parser, batch_size: int) -> None:
    """The flags every model benchmark takes: net, head, embedding size, input size, batch."""
    import common
    from model import plugin_names
    parser.add_argument('--model_name', default='resnet_v1_50', choices=plugin_names('nets'))
    parser.add_argument('--head_name', default='fc1024', choices=plugin_names('heads'))
    parser.add_argument('--embedding_dim', type=common.positive_int, default=128)
    parser.add_argument('--height', type=common.positive_int, default=256,
                        help='Net input height in pixels.')
    parser.add_argument('--width', type=common.positive_int, default=128,
                        help='Net input width in pixels.')
    parser.add_argument('--batch_size', type=common.positive_int, default=batch_size)


def write_jpegs(folder: Path, count: int, height: int, width: int) -> list[str]:
    """`count` JPEG files of height x width and smooth random content (which compresses like
    photos, unlike noise) at quality 90, in `folder`; returns their paths."""
    import cv2
    import numpy as np
    rng, paths = np.random.default_rng(0), []
    for i in range(count):
        small = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
        paths.append(str(folder / f'{i:05d}.jpg'))
        cv2.imwrite(paths[-1], cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths
