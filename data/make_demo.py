"""Draws a small synthetic person re-id dataset, laid out and named like Market-1501.

    python data/make_demo.py --out data/demo

Every identity is a stick-figure pedestrian with its own clothing (colours, a pattern on the
top, sleeves, trousers/shorts/skirt, shoes, hair, an optional hat and bag). Each of several
"cameras" has its own background, lighting, colour cast, blur, noise, JPEG quality and
preferred viewpoint (front or back); every image also varies pose, position, scale and
brightness. The output is deterministic for a seed, byte for byte:

    OUT/bounding_box_train/0001_c1s1_000017_01.jpg   images of the training identities
    OUT/query/0101_c3s1_000412_00.jpg                one per test identity and camera
    OUT/bounding_box_test/...                        the other test images, distractors
                                                     (identity 0000) and junk (-1)
    OUT/demo_train.csv, demo_query.csv, demo_test.csv   `pid,relative/path`, paths relative
                                                     to OUT, sorted as prepare.py sorts them

With --video it draws tracklets instead, laid out and named like MARS (the frames of a
tracklet keep the person's pose and the camera's background and change a little: position,
lighting, noise):

    OUT/bbox_train/0001/0001C1T0001F001.jpg          training tracklets, frame by frame
    OUT/bbox_test/0101/0101C3T0002F004.jpg           test tracklets: every identity's, and
                                                     distractors (0000) and junk (00-1)
    OUT/info/test_name.txt, tracks_test_info.mat, query_IDX.mat   MARS's own query files
    OUT/demo_train.csv, demo_query.csv, demo_test.csv   one line per frame, as `prepare.py
                                                     mars` writes them from the folder
"""
import argparse
import csv
import io
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

# Scripts in data/ run as `python data/make_demo.py`: the repo root must be on the path for common.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

parser = argparse.ArgumentParser(description='Draw a small synthetic re-id dataset (Market-1501 '
                                 'layout and names) with train/query/test CSVs.')
parser.add_argument('--out', type=Path, required=True,
                    help='folder to write into; an existing demo folder is replaced, any other '
                         'non-empty folder is refused')
parser.add_argument('--seed', type=int, default=0, help='random seed; same seed, same bytes')
parser.add_argument('--train_ids', type=common.positive_int, default=100,
                    help='identities for training (default: 100)')
parser.add_argument('--test_ids', type=common.positive_int, default=100,
                    help='identities for query and gallery (default: 100)')
parser.add_argument('--cameras', type=common.positive_int, default=6,
                    help='number of cameras, at least 2 (default: 6, as Market-1501)')
parser.add_argument('--distractors', type=common.nonnegative_int, default=50,
                    help='gallery images of one-off people, identity 0000 (default: 50)')
parser.add_argument('--junk', type=common.nonnegative_int, default=20,
                    help='gallery images of background and cut-off people, identity -1, which '
                         'the market1501 excluder ignores (default: 20)')
parser.add_argument('--height', type=common.positive_int, default=128,
                    help='image height in pixels (default: 128, as Market-1501)')
parser.add_argument('--width', type=common.positive_int, default=64,
                    help='image width in pixels (default: 64)')
parser.add_argument('--video', action='store_true',
                    help='draw tracklets of several frames named as MARS names them (bbox_train/,\n'
                         'bbox_test/, info/); --distractors and --junk then count tracklets')
parser.add_argument('--max_frames', type=common.positive_int, default=8,
                    help='--video: frames per tracklet are drawn from 1 to this (default: 8)')

SPLITS = {'train': 'bounding_box_train', 'query': 'query', 'test': 'bounding_box_test'}
VIDEO_SPLITS = {'train': 'bbox_train', 'test': 'bbox_test'}
# Few colours on purpose: identities share single colours, only combinations tell them apart.
TOP_COLOURS = [(40, 40, 200), (200, 60, 40), (40, 160, 40), (30, 200, 230), (230, 230, 230),
               (35, 35, 35), (140, 60, 150), (0, 120, 255), (150, 150, 150), (120, 80, 30)]
BOTTOM_COLOURS = [(40, 30, 25), (130, 70, 20), (90, 90, 90), (200, 200, 200), (60, 90, 140),
                  (30, 30, 110), (20, 60, 20)]
SKIN = [(150, 180, 230), (120, 150, 200), (80, 110, 160), (50, 70, 110)]
HAIR = [(20, 20, 20), (30, 60, 100), (80, 170, 210), (170, 170, 170), (30, 60, 160)]
PATTERNS = ('plain', 'hstripes', 'vstripes', 'split', 'logo')


# ----------------------------------------------------------------------------- appearance
def pick(rng: np.random.Generator, options: list):
    return options[rng.integers(len(options))]


def make_person(rng: np.random.Generator) -> dict:
    """The appearance of one identity: what stays the same in every image of it."""
    return {
        'skin': pick(rng, SKIN), 'hair': pick(rng, HAIR), 'long_hair': rng.random() < 0.3,
        'hat': pick(rng, TOP_COLOURS) if rng.random() < 0.2 else None,
        'top': pick(rng, TOP_COLOURS), 'top2': pick(rng, TOP_COLOURS),
        'pattern': pick(rng, PATTERNS), 'short_sleeves': rng.random() < 0.4,
        'bottom': pick(rng, BOTTOM_COLOURS),
        'legwear': pick(rng, ['trousers', 'trousers', 'trousers', 'shorts', 'skirt']),
        'shoes': pick(rng, [(20, 20, 20), (230, 230, 230), (40, 60, 120), (30, 30, 180)]),
        'bag': pick(rng, [None, None, 'backpack', 'shoulder']), 'bag_colour': pick(rng, HAIR),
        'build': rng.uniform(0.85, 1.2), 'tall': rng.uniform(0.92, 1.05),
    }


def make_camera(rng: np.random.Generator) -> dict:
    """What one camera does to every image it takes."""
    return {
        'wall': rng.integers(60, 200, 3), 'floor': rng.integers(40, 180, 3),
        'horizon': rng.uniform(0.45, 0.75), 'texture': pick(rng, ['noise', 'tiles', 'gradient']),
        'gain': rng.uniform(0.65, 1.25), 'cast': rng.uniform(0.8, 1.2, 3),
        'noise': rng.uniform(2, 8), 'blur': rng.uniform(0, 1.2),
        'quality': int(rng.integers(70, 96)), 'p_back': rng.uniform(0.1, 0.9),
        'scale': rng.uniform(0.78, 0.95),
    }


# ----------------------------------------------------------------------------- drawing
def draw_background(rng: np.random.Generator, cam: dict, h: int, w: int) -> np.ndarray:
    horizon = int(h * (cam['horizon'] + rng.uniform(-0.05, 0.05)))
    image = np.empty((h, w, 3), np.float32)
    image[:horizon], image[horizon:] = cam['wall'], cam['floor']
    if cam['texture'] == 'noise':
        blobs = rng.normal(0, 25, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
        image += cv2.resize(blobs, (w, h), interpolation=cv2.INTER_LINEAR)
    elif cam['texture'] == 'tiles':
        step, offset = int(rng.integers(8, 16)), int(rng.integers(16))
        image[:horizon, (np.arange(w) + offset) % step < 2] *= 0.7
        image[horizon:][(np.arange(h - horizon) + offset) % step < 2] *= 0.8
    else:
        image *= np.linspace(1.2, 0.7, h, dtype=np.float32)[:, None, None]
    for _ in range(int(rng.integers(0, 3))):  # clutter: poles, signs, doors
        x0, y0 = int(rng.integers(w)), int(rng.integers(h))
        x1, y1 = x0 + int(rng.integers(3, w // 2)), y0 + int(rng.integers(5, h // 2))
        image[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    # OpenCV anti-aliases only on 8-bit images: the person is drawn on uint8.
    return np.clip(image, 0, 255).astype(np.uint8)


def limb(image, start, angle, length, thickness, colour):
    """Draws a thick line from `start` at `angle` (radians from straight down); returns its end."""
    end = (start[0] + length * np.sin(angle), start[1] + length * np.cos(angle))
    cv2.line(image, (int(start[0]), int(start[1])), (int(end[0]), int(end[1])), colour,
             max(1, int(thickness)), cv2.LINE_AA)
    return end


def draw_person(image: np.ndarray, rng: np.random.Generator, person: dict, cam: dict,
                back: bool) -> None:
    """Draws `person` in a random pose, position and size onto the uint8 image (H, W, 3)."""
    h, w = image.shape[:2]
    height = h * cam['scale'] * person['tall'] * rng.uniform(0.9, 1.05)
    u = height / 8  # about one head height
    cx = w / 2 + rng.uniform(-0.12, 0.12) * w
    top = h - height - rng.uniform(0.0, 0.06) * h
    half = 0.8 * u * person['build']
    pose = {'u': u, 'cx': cx, 'top': top, 'half': half, 'back': back,
            'shoulder_y': top + 1.1 * u, 'hip_y': top + 3.9 * u,
            'stride': rng.uniform(-0.35, 0.35), 'swing': rng.uniform(-0.5, 0.5),
            # which side the shoulder bag and split colours show
            'flip': 1 if rng.random() < 0.5 else -1}
    draw_legs(image, person, pose)  # first, so that the torso hides the hip joints
    draw_torso(image, person, pose)
    draw_arms(image, person, pose)
    draw_head(image, person, pose)


def draw_legs(image: np.ndarray, person: dict, pose: dict) -> None:
    """Legs, shoes, a skirt, and a backpack seen from the front."""
    u, cx, half, hip_y = pose['u'], pose['cx'], pose['half'], pose['hip_y']
    for side, angle in ((-1, pose['stride']), (1, -pose['stride'])):
        hip = (cx + side * 0.45 * half, hip_y)
        legwear = person['bottom'] if person['legwear'] == 'trousers' else person['skin']
        foot = limb(image, hip, angle, 3.9 * u, 0.6 * u, legwear)
        if person['legwear'] == 'shorts':
            limb(image, hip, angle, 1.8 * u, 0.65 * u, person['bottom'])
        shoe = (max(1, int(0.4 * u)), max(1, int(0.2 * u)))
        cv2.ellipse(image, (int(foot[0]), int(foot[1])), shoe, 0, 0, 360, person['shoes'], -1,
                    cv2.LINE_AA)
    if person['legwear'] == 'skirt':
        skirt = np.array([[cx - half, hip_y - 0.2 * u], [cx + half, hip_y - 0.2 * u],
                          [cx + 1.4 * half, hip_y + 1.9 * u], [cx - 1.4 * half, hip_y + 1.9 * u]])
        cv2.fillPoly(image, [skirt.astype(np.int32)], person['bottom'], cv2.LINE_AA)
    if person['bag'] == 'backpack' and not pose['back']:  # from the front only a bit sticks out
        cv2.rectangle(image, (int(cx - 1.25 * half), int(pose['shoulder_y'] + 0.3 * u)),
                      (int(cx + 1.25 * half), int(hip_y - 0.5 * u)), person['bag_colour'], -1)


def draw_torso(image: np.ndarray, person: dict, pose: dict) -> None:
    """The torso with the identity's pattern, and a backpack seen from behind."""
    h, w = image.shape[:2]
    u, cx, half, back = pose['u'], pose['cx'], pose['half'], pose['back']
    shoulder_y, hip_y = pose['shoulder_y'], pose['hip_y']
    torso = np.array([[cx - half, shoulder_y], [cx + half, shoulder_y],
                      [cx + 0.85 * half, hip_y], [cx - 0.85 * half, hip_y]]).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [torso], 255)
    layer = np.empty_like(image)
    layer[:] = person['top']
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    period = max(2, int(0.5 * u))
    pattern = person['pattern']
    if pattern == 'hstripes':
        layer[((ys - int(shoulder_y)) // period % 2 == 1).repeat(w, 1)] = person['top2']
    elif pattern == 'vstripes':
        layer[((xs - int(cx)) // period % 2 == 1).repeat(h, 0)] = person['top2']
    elif pattern == 'split':
        layer[((xs - cx) * pose['flip'] > 0).repeat(h, 0)] = person['top2']
    elif pattern == 'logo' and not back:
        cv2.circle(layer, (int(cx), int(shoulder_y + 1.1 * u)), max(1, int(0.45 * half)),
                   person['top2'], -1)
    image[mask > 0] = layer[mask > 0]
    if person['bag'] == 'backpack' and back:
        cv2.rectangle(image, (int(cx - 0.75 * half), int(shoulder_y + 0.3 * u)),
                      (int(cx + 0.75 * half), int(hip_y - 0.3 * u)), person['bag_colour'], -1)


def draw_arms(image: np.ndarray, person: dict, pose: dict) -> None:
    """Arms swing against the legs; short sleeves leave the forearm bare. A shoulder bag."""
    u, cx, half, stride = pose['u'], pose['cx'], pose['half'], pose['stride']
    shoulder_y, hip_y, flip = pose['shoulder_y'], pose['hip_y'], pose['flip']
    for side in (-1, 1):
        shoulder = (cx + side * 0.95 * half, shoulder_y + 0.25 * u)
        angle = side * 0.12 + pose['swing'] * side * (1 if side * stride > 0 else -1)
        sleeve = 1.3 * u if person['short_sleeves'] else 3.0 * u
        limb(image, shoulder, angle, 3.0 * u, 0.45 * u, person['skin'])
        limb(image, shoulder, angle, sleeve, 0.5 * u, person['top'])
    if person['bag'] == 'shoulder':
        x = cx + flip * 1.15 * half
        cv2.line(image, (int(cx - flip * 0.7 * half), int(shoulder_y)), (int(x), int(hip_y)),
                 person['bag_colour'], max(1, int(0.15 * u)), cv2.LINE_AA)
        cv2.rectangle(image, (int(x - 0.45 * u), int(hip_y - 0.3 * u)),
                      (int(x + 0.45 * u), int(hip_y + 0.6 * u)), person['bag_colour'], -1)


def draw_head(image: np.ndarray, person: dict, pose: dict) -> None:
    """Hair covers the head from behind; long hair falls on the shoulders; a hat."""
    u, cx, top = pose['u'], pose['cx'], pose['top']
    head = (int(cx), int(top + 0.55 * u))
    radius = max(2, int(0.5 * u))
    if person['long_hair']:
        cv2.rectangle(image, (int(cx - 0.6 * u), head[1]),
                      (int(cx + 0.6 * u), int(pose['shoulder_y'] + 0.6 * u)), person['hair'], -1)
    cv2.circle(image, head, radius, person['hair'] if pose['back'] else person['skin'], -1,
               cv2.LINE_AA)
    cv2.ellipse(image, head, (radius, radius), 0, 180, 360, person['hair'], -1, cv2.LINE_AA)
    if person['hat'] is not None:
        cv2.rectangle(image, (int(cx - 0.6 * u), int(top - 0.1 * u)),
                      (int(cx + 0.6 * u), int(top + 0.35 * u)), person['hat'], -1)


def photograph(image: np.ndarray, rng: np.random.Generator, cam: dict) -> bytes:
    """Applies the camera's lighting, blur and noise, and encodes the JPEG."""
    gain = cam['gain'] * rng.uniform(0.85, 1.15)
    colour = gain * cam['cast'] * rng.uniform(0.95, 1.05, 3)
    image = image.astype(np.float32) * colour.astype(np.float32)
    sigma = cam['blur'] + rng.uniform(0, 0.4)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image += rng.normal(0, cam['noise'], image.shape).astype(np.float32)
    ok, jpeg = cv2.imencode('.jpg', np.clip(image, 0, 255).astype(np.uint8),
                            [cv2.IMWRITE_JPEG_QUALITY, cam['quality']])
    assert ok, 'OpenCV could not encode a JPEG'
    return jpeg.tobytes()


# ----------------------------------------------------------------------------- main
def prepare_output(args: argparse.Namespace) -> Path:
    """Checks the flags and empties (or makes) the output's split folders; returns it."""
    if args.cameras < 2:
        raise common.InputError(f'--cameras {args.cameras}: cross-camera re-id needs at least 2')
    if args.cameras > 9:
        raise common.InputError(f'--cameras {args.cameras}: Market-1501 names hold one digit')
    if args.train_ids + args.test_ids > 9999:
        raise common.InputError('--train_ids plus --test_ids must fit in four digits (<= 9999)')
    if args.height < 32 or args.width < 16:
        raise common.InputError(f'{args.height}x{args.width} is too small to draw a person in '
                                '(at least 32x16)')
    out = args.out
    if out.exists() and any(out.iterdir()) and not (out / 'demo_train.csv').is_file():
        raise common.InputError(f'{out} is not empty and not a demo folder: refusing to write')
    try:
        # Both kinds' folders go: a video demo replacing an image demo leaves no images behind.
        for sub in [*SPLITS.values(), *VIDEO_SPLITS.values(), 'info']:
            shutil.rmtree(out / sub, ignore_errors=True)
        for sub in [*(VIDEO_SPLITS if args.video else SPLITS).values()] + ['info'] * args.video:
            (out / sub).mkdir(parents=True)
    except OSError as e:
        raise common.InputError(f'cannot write to {out}: {e}') from None
    return out


def main() -> None:
    args = parser.parse_args()
    out = prepare_output(args)
    if args.video:
        return make_video(args, out)

    # Separate streams per identity and camera: identity 0150 looks the same whatever the
    # number of training identities or cameras.
    cams = [make_camera(np.random.default_rng([args.seed, 1, c])) for c in range(args.cameras)]
    frames = np.zeros(args.cameras, np.int64)
    rng = np.random.default_rng([args.seed, 0])
    tables = {split: [] for split in SPLITS}

    def shoot(pid: str, person: dict | None, cam_index: int, split: str, box: int) -> None:
        cam = cams[cam_index]
        image = draw_background(rng, cam, args.height, args.width)
        if person is not None:
            draw_person(image, rng, person, cam, back=rng.random() < cam['p_back'])
        frames[cam_index] += rng.integers(3, 60)  # frame numbers grow, as along a video
        name = f'{pid}_c{cam_index + 1}s1_{frames[cam_index]:06d}_{box:02d}.jpg'
        fid = f'{SPLITS[split]}/{name}'
        (out / fid).write_bytes(photograph(image, rng, cam))
        tables[split].append((pid, fid))

    # Identities: each seen by 2+ cameras, 2-5 images in each, so that every query has a
    # match in another camera.
    for number in range(1, args.train_ids + args.test_ids + 1):
        person = make_person(np.random.default_rng([args.seed, 2, number]))
        n_cams = int(rng.integers(2, min(4, args.cameras) + 1))
        is_test = number > args.train_ids
        for cam_index in sorted(rng.choice(args.cameras, n_cams, replace=False)):
            n_images = int(rng.integers(2, 6))
            query = int(rng.integers(n_images)) if is_test else -1
            for i in range(n_images):
                split = 'train' if not is_test else 'query' if i == query else 'test'
                # Box 00 marks a hand-drawn query box in Market-1501, 01+ a detector's boxes.
                shoot(f'{number:04d}', person, int(cam_index), split, 0 if i == query else 1)

    # Distractors are one-off people; junk is background, or a person mostly out of the box.
    for i in range(args.distractors):
        person = make_person(np.random.default_rng([args.seed, 3, i]))
        shoot('0000', person, int(rng.integers(args.cameras)), 'test', 1)
    for i in range(args.junk):
        person = make_person(np.random.default_rng([args.seed, 4, i])) if i % 2 else None
        if person is not None:
            person['tall'] *= 2.2  # only the legs fit in the box
        shoot('-1', person, int(rng.integers(args.cameras)), 'test', 1)

    write_tables(out, tables)


def write_tables(out: Path, tables: dict[str, list[tuple[str, str]]]) -> None:
    """OUT/demo_<split>.csv for each table, sorted by path as prepare.py sorts them."""
    for split, rows in tables.items():
        with (common.atomic_write(out / f'demo_{split}.csv') as tmp,
              open(tmp, 'w', newline='', encoding='utf-8') as f):
            csv.writer(f, lineterminator='\n').writerows(sorted(rows, key=lambda row: row[1]))
        print(f'wrote {out}/demo_{split}.csv: {len(rows)} images of '
              f'{len({pid for pid, _ in rows})} identities')


# ----------------------------------------------------------------------------- video (MARS)
def make_video(args: argparse.Namespace, out: Path) -> None:
    """The --video dataset: MARS's layout and names, and its info/ files for the query."""
    cams = [make_camera(np.random.default_rng([args.seed, 1, c])) for c in range(args.cameras)]
    rng = np.random.default_rng([args.seed, 5])
    tables = {'train': [], 'query': [], 'test': []}
    tracks = []  # test tracklets: (pid, camera, fids)
    queries = []

    def film(pid: str, person: dict | None, cam_index: int, number: int, split: str) -> list:
        """One tracklet: the same pose and background, frame to frame a small change."""
        cam = cams[cam_index]
        scene = np.random.default_rng([args.seed, 6, len(tables[split]), cam_index])
        background = draw_background(scene, cam, args.height, args.width)
        image = background.copy()
        if person is not None:
            draw_person(image, scene, person, cam, back=scene.random() < cam['p_back'])
        step = rng.uniform(-1.5, 1.5)  # pixels per frame: the person walks across
        fids = []
        for frame in range(1, int(rng.integers(1, args.max_frames + 1)) + 1):
            shift = np.float32([[1, 0, step * (frame - 1)], [0, 1, 0]])
            moved = cv2.warpAffine(image, shift, (args.width, args.height),
                                   borderMode=cv2.BORDER_REPLICATE)
            name = f'{pid}C{cam_index + 1}T{number:04d}F{frame:03d}.jpg'
            fid = f'{VIDEO_SPLITS[split]}/{pid}/{name}'
            (out / fid).parent.mkdir(exist_ok=True)
            # The same draw of lighting, blur and noise for every frame: the camera's
            # settings do not jump within a tracklet; the moving person changes the pixels.
            look = np.random.default_rng([args.seed, 7, len(tables[split]), cam_index])
            (out / fid).write_bytes(photograph(moved, look, cam))
            fids.append(fid)
        tables[split] += [(pid, fid) for fid in fids]
        if split == 'test':
            tracks.append((pid, cam_index + 1, fids))
        return fids

    # Each identity: 2-4 cameras, 1-2 tracklets in each. A test identity gives one query
    # tracklet per camera; the gallery (demo_test.csv) holds every test tracklet, as MARS's.
    for number in range(1, args.train_ids + args.test_ids + 1):
        person = make_person(np.random.default_rng([args.seed, 2, number]))
        split = 'train' if number <= args.train_ids else 'test'
        tracklet = 0
        for cam_index in sorted(rng.choice(args.cameras, int(rng.integers(2, min(4, args.cameras)
                                                                         + 1)), replace=False)):
            for i in range(int(rng.integers(1, 3))):
                tracklet += 1
                fids = film(f'{number:04d}', person, int(cam_index), tracklet, split)
                if split == 'test' and i == 0:
                    queries.append(len(tracks) - 1)
                    tables['query'] += [(f'{number:04d}', fid) for fid in fids]
    for i in range(args.distractors):
        person = make_person(np.random.default_rng([args.seed, 3, i]))
        film('0000', person, int(rng.integers(args.cameras)), i + 1, 'test')
    for i in range(args.junk):
        film('00-1', None, int(rng.integers(args.cameras)), i + 1, 'test')
    write_info(out, tracks, queries)
    write_tables(out, tables)


def write_info(out: Path, tracks: list, queries: list[int]) -> None:
    """MARS's info/ files: test_name.txt (test frames, tracklet by tracklet, sorted by name),
    tracks_test_info.mat (1-based first and last line, identity, camera per tracklet) and
    query_IDX.mat (1-based tracklet numbers of the queries)."""
    import scipy.io
    order = sorted(range(len(tracks)), key=lambda t: tracks[t][2][0])
    names, rows = [], []
    for t in order:
        pid, cam, fids = tracks[t]
        rows.append([len(names) + 1, len(names) + len(fids), -1 if pid == '00-1' else int(pid),
                     cam])
        names += [fid.rsplit('/', 1)[1] for fid in fids]
    position = {t: n for n, t in enumerate(order, start=1)}
    (out / 'info' / 'test_name.txt').write_text(''.join(f'{name}\n' for name in names))
    variables = {'tracks_test_info': ('track_test_info', rows),
                 'query_IDX': ('query_IDX', [[position[q] for q in queries]])}
    for file, (key, value) in variables.items():
        data = io.BytesIO()
        scipy.io.savemat(data, {key: np.array(value, np.float64)})
        # The 116-byte text of a MAT-file's header holds the time it was written: a fixed
        # text instead keeps "same seed, same bytes".
        text = b'MATLAB 5.0 MAT-file, written by make_demo.py'.ljust(116)
        (out / 'info' / f'{file}.mat').write_bytes(text + data.getvalue()[116:])


if __name__ == '__main__':
    common.run(main)
