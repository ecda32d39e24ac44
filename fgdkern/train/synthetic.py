"""The built-in synthetic detection dataset, written to disk in the COCO format.

    make_synthetic_coco(root, num_train=512, num_val=96)  ->  root/
        annotations/instances_train.json, annotations/instances_val.json
        train/000000000001.png ...,  val/000000000001.png ...
        synthetic.json                 (the parameters it was made with)

Used when no real dataset is given, so that every other code path (pycocotools,
COCOeval) is the one a COCO run takes. Each image has a textured background
(smooth colour noise, a gradient, a few lines) and 1-6 objects of the classes
in CLASSES. A class has its own shape, colour range and texture; every instance
jitters its colour (sometimes to any hue), size, stretch and rotation, so no
single cue gives the class away. Sizes cover COCO's small (< 32^2 px), medium
and large (> 96^2 px) ranges. Later objects are drawn over earlier ones: the
box (x, y, w, h) is the whole object's box, `area` is its visible pixel count
(as COCO's mask area) and an object never keeps less than MIN_VISIBLE of its
pixels (a placement that would hide more is tried elsewhere or given up).
Everything is a function of `seed`: image i of a split depends only on
(seed, split, i). Needs numpy and Pillow only.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import pathlib
import shutil
import tempfile

import numpy as np

CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross", "star")

# class -> (hue centre in 0..1, texture); hues are jittered by +-HUE_JITTER.
_STYLE = {
    "disc": (0.00, "rings"),
    "square": (0.14, "checks"),
    "triangle": (0.31, "stripes"),
    "ring": (0.50, "speckle"),
    "cross": (0.64, "solid"),
    "star": (0.82, "dots"),
}
# Shape area / R^2 for a circumradius R (used to turn a wanted area into R).
_AREA_PER_R2 = {"disc": math.pi, "square": 2.0, "triangle": 1.30, "ring": 2.2,
                "cross": 1.59, "star": 1.32}
HUE_JITTER = 0.07
RANDOM_HUE_P = 0.15          # chance that an instance takes any hue at all
MIN_VISIBLE = 0.3            # fraction of an object's pixels that stays visible
MAX_OBJECTS = 6
# Wanted visible area per COCO size range: (probability, low, high) in px^2.
_SIZE_RANGES = ((0.3, 80.0, 900.0), (0.25, 1100.0, 8500.0), (0.45, 9800.0, None))
_VERSION = 1                 # bump when the rendering changes: old copies are rebuilt
_SPLITS = ("train", "val")


def make_synthetic_coco(root, *, num_train: int, num_val: int,
                        image_size: int | tuple[int, int] = 224, seed: int = 0) -> pathlib.Path:
    """Write the dataset under `root` once and return root (a pathlib.Path).

    image_size: an int S gives S x S, S x 3S/4 and 3S/4 x S images (w x h, half of
    them square) so that aspect-ratio grouping has work to do; a pair (height,
    width) gives every image that size. Reads root/synthetic.json: a complete
    copy made with the same parameters is reused untouched. Otherwise builds in a
    temporary sibling directory and renames it into place, so a killed run never
    leaves a half dataset; a previous copy made by this function is replaced, any
    other non-empty directory at `root` is refused (FileExistsError).
    """
    params = _params(num_train, num_val, image_size, seed)
    root = pathlib.Path(root)
    if _is_complete(root, params):
        return root
    if root.exists() and not (root / "synthetic.json").exists() and any(root.iterdir()):
        raise FileExistsError(f"make_synthetic_coco: {root} exists, is not empty and holds no "
                              "synthetic dataset (no synthetic.json); give an empty or new path")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _build(tmp, params)
        _install(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _params(num_train, num_val, image_size, seed) -> dict:
    """Validate the arguments; return them as the json-able marker content."""
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"make_synthetic_coco: {name} must be a positive int, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"make_synthetic_coco: seed must be an int, got {seed!r}")
    size = [image_size] if isinstance(image_size, int) else list(image_size)
    if len(size) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool)
                                          and s >= 32 for s in size):
        raise ValueError("make_synthetic_coco: image_size must be an int >= 32 or a pair "
                         f"(height, width) of ints >= 32, got {image_size!r}")
    return {"version": _VERSION, "num_train": num_train, "num_val": num_val,
            "image_size": size, "seed": seed}


def _is_complete(root: pathlib.Path, params: dict) -> bool:
    """True when root holds a whole copy made with `params` (reads the marker, lists dirs)."""
    try:
        marker = json.loads((root / "synthetic.json").read_text())
    except (OSError, ValueError):
        return False
    if marker != params:
        return False
    for split in _SPLITS:
        if not (root / "annotations" / f"instances_{split}.json").is_file():
            return False
        if len(os.listdir(root / split)) != params[f"num_{split}"]:
            return False
    return True


def _install(tmp: pathlib.Path, root: pathlib.Path, params: dict) -> None:
    """Rename the finished `tmp` to `root`, replacing an older synthetic copy.

    When another process installed the same dataset meanwhile, its copy is kept.
    """
    old = None
    if root.exists():
        if _is_complete(root, params):
            return
        old = root.with_name(f"{tmp.name}.old")
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        if not _is_complete(root, params):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(out: pathlib.Path, params: dict) -> None:
    """Write both splits' PNGs and json files, then the marker, under `out`."""
    (out / "annotations").mkdir()
    for split_index, split in enumerate(_SPLITS):
        coco = _write_split(out / split, params[f"num_{split}"], params["image_size"],
                            (params["seed"], split_index))
        with open(out / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(coco, f, separators=(",", ":"))
    (out / "synthetic.json").write_text(json.dumps(params))


def _write_split(folder: pathlib.Path, count: int, image_size: list, key: tuple) -> dict:
    """Render `count` images into `folder` as PNG; return the split's COCO json dict."""
    from PIL import Image
    folder.mkdir()
    images, annotations = [], []
    for image_id in range(1, count + 1):
        seed = (key[0] % 2 ** 64, key[1], image_id)
        rng = np.random.default_rng(np.random.SeedSequence(seed))
        height, width = _image_shape(rng, image_size)
        pixels, objects = render_image(rng, height, width)
        name = f"{image_id:012d}.png"
        Image.fromarray(pixels).save(folder / name, compress_level=1)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": obj["category_id"], "bbox": obj["bbox"],
                                "area": obj["area"], "iscrowd": 0})
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CLASSES)]
    return {"info": {"description": "fgdkern synthetic shapes", "version": str(_VERSION)},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}


def _image_shape(rng: np.random.Generator, image_size: list) -> tuple[int, int]:
    """(height, width) of one image: the given pair, or S x S / S x 3S/4 / 3S/4 x S."""
    if len(image_size) == 2:
        return image_size[0], image_size[1]
    s = image_size[0]
    short = int(round(0.75 * s))
    return [(s, s), (s, s), (short, s), (s, short)][rng.integers(4)]


def render_image(rng: np.random.Generator, height: int, width: int):
    """Draw one image; return (pixels uint8 (height, width, 3), objects).

    objects: dicts with category_id, bbox [x, y, w, h] (the whole object, in pixel
    edges), area (visible pixels) and pixels (the whole object's pixel count), in
    drawing order; hidden ones are left out.
    """
    pixels = _background(rng, height, width)
    owner = np.zeros((height, width), np.int32)        # index + 1 of the top object
    visible = np.zeros(MAX_OBJECTS + 1, np.int64)      # visible pixels per index
    drawn = []                                          # (category_id, bbox, pixel count)
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        placed = _place_object(rng, pixels, owner, visible, [d[2] for d in drawn])
        if placed is not None:
            drawn.append(placed)
    objects = [{"category_id": cat, "bbox": box, "area": float(v), "pixels": n}
               for (cat, box, n), v in zip(drawn, visible[1:]) if v > 0]
    return pixels, objects


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour noise + a linear gradient, muted, + a few lines; uint8 (h, w, 3)."""
    from PIL import Image, ImageDraw
    grid = _muted(rng.uniform(0, 1, size=(rng.integers(3, 9), rng.integers(3, 9), 3)))
    grid = Image.fromarray((grid * 255).astype(np.uint8))
    noise = np.asarray(grid.resize((width, height), Image.BICUBIC), np.float32) / 510.0
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.arange(width, dtype=np.float32) * math.cos(angle)
            + np.arange(height, dtype=np.float32)[:, None] * math.sin(angle))
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    c0, c1 = _muted(rng.uniform(0.15, 0.85, size=(2, 3))).astype(np.float32)
    bg = noise + 0.5 * c0 + (0.5 * (c1 - c0)) * ramp[..., None]
    image = Image.fromarray((bg * 255.0).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 8)):
        xy = [float(v) for v in rng.uniform(0, 1, 4) * (width, height, width, height)]
        colour = tuple(int(c) for c in rng.integers(40, 216, 3))
        draw.line(xy, fill=colour, width=int(rng.integers(1, 4)))
    return np.array(image)


def _muted(colours: np.ndarray) -> np.ndarray:
    """Pull RGB colours (last axis) 45% of the way to their grey, so objects stand out."""
    grey = colours.mean(axis=-1, keepdims=True)
    return grey + 0.55 * (colours - grey)


def _place_object(rng, pixels, owner, visible, counts):
    """Sample one object and paint it at a spot that keeps every earlier object at
    least MIN_VISIBLE of its `counts` pixels visible (8 tries). Writes `pixels`,
    `owner` (the new index) and `visible` (the visible pixel count per index).
    Returns (category_id, bbox, pixel count) or None when no spot was found."""
    height, width = owner.shape
    index = len(counts) + 1
    cls = int(rng.integers(len(CLASSES)))
    shape = _sample_shape(rng, CLASSES[cls], height, width)
    mask, colours = _render(rng, CLASSES[cls], shape)
    mh, mw = mask.shape
    for _ in range(8):
        y0 = int(rng.integers(0, height - mh + 1))
        x0 = int(rng.integers(0, width - mw + 1))
        region = (slice(y0, y0 + mh), slice(x0, x0 + mw))
        covered = np.bincount(owner[region][mask], minlength=index)
        if all(visible[j] - covered[j] >= MIN_VISIBLE * counts[j - 1] for j in range(1, index)):
            visible[:index] -= covered
            visible[index] = mask.sum()
            owner[region][mask] = index
            pixels[region][mask] = colours[mask]
            ys, xs = np.nonzero(mask)
            bbox = [float(x0 + xs.min()), float(y0 + ys.min()),
                    float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            return cls + 1, bbox, int(mask.sum())
    return None


def _sample_shape(rng, name: str, height: int, width: int) -> dict:
    """Circumradius R (px, from a wanted area in one COCO size range, clamped to
    fit the image), stretch (sx, sy), rotation and the shape's own jitter."""
    p = [r[0] for r in _SIZE_RANGES]
    _, low, high = _SIZE_RANGES[rng.choice(len(_SIZE_RANGES), p=p)]
    high = high or 0.5 * height * width
    area = math.exp(rng.uniform(math.log(low), math.log(max(high, low))))
    stretch = math.exp(rng.uniform(-0.22, 0.22))
    sx, sy = math.sqrt(stretch), 1.0 / math.sqrt(stretch)
    radius = math.sqrt(area / _AREA_PER_R2[name])
    radius = min(radius, (height / 2 - 1) / sy, (width / 2 - 1) / sx)
    return {"radius": max(radius, 3.0), "sx": sx, "sy": sy,
            "angle": rng.uniform(0, 2 * math.pi), "inner": rng.uniform(0.45, 0.65),
            "arm": rng.uniform(0.2, 0.3), "tip": rng.uniform(0.38, 0.5)}


def _render(rng, name: str, shape: dict):
    """The object's mask (bool (h, w), tight) and colours (uint8 (h, w, 3)).

    Pixel centres are mapped to shape coordinates (u, v), where the shape fits in
    the unit circle: undo the stretch and the rotation, divide by R."""
    r = shape["radius"]
    half_w, half_h = r * shape["sx"], r * shape["sy"]
    ys, xs = np.mgrid[0:2 * math.ceil(half_h), 0:2 * math.ceil(half_w)].astype(np.float32)
    x = (xs + 0.5 - math.ceil(half_w)) / half_w
    y = (ys + 0.5 - math.ceil(half_h)) / half_h
    c, s = math.cos(shape["angle"]), math.sin(shape["angle"])
    u, v = c * x + s * y, -s * x + c * y
    mask = _SHAPES[name](u, v, shape)
    if not mask.any():                                  # too small to hit a pixel centre
        mask[mask.shape[0] // 2, mask.shape[1] // 2] = True
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    tight = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    colours = _colour(rng, name, u[tight] * r, v[tight] * r, r)
    return mask[tight], (colours * 255.0 + 0.5).astype(np.uint8)


def _disc(u, v, shape):
    return u * u + v * v <= 1.0


def _ring(u, v, shape):
    rr = u * u + v * v
    return (rr <= 1.0) & (rr >= shape["inner"] ** 2)


def _square(u, v, shape):
    return np.maximum(np.abs(u), np.abs(v)) <= math.sqrt(0.5)


def _triangle(u, v, shape):
    """Equilateral: inside the three half-planes at distance 1/2 (the inradius)."""
    inside = np.ones(u.shape, bool)
    for k in range(3):
        a = math.pi / 2 + 2 * math.pi * k / 3
        inside &= u * math.cos(a) + v * math.sin(a) >= -0.5
    return inside


def _cross(u, v, shape):
    au, av, w = np.abs(u), np.abs(v), shape["arm"]
    reach = math.sqrt(1.0 - w * w)
    return ((au <= w) & (av <= reach)) | ((av <= w) & (au <= reach))


def _star(u, v, shape):
    """Five points: in polar form, inside the straight edge from a tip (radius 1)
    to the next inner corner (radius `tip`, 36 degrees away)."""
    sector = 2 * math.pi / 5
    phi = np.abs(np.mod(np.arctan2(u, v), sector) - sector / 2)   # 0 at an inner corner
    inner = np.array([shape["tip"], 0.0])
    outer = np.array([math.cos(sector / 2), math.sin(sector / 2)])
    normal = np.array([outer[1] - inner[1], inner[0] - outer[0]])
    limit = normal @ inner / (normal[0] * np.cos(phi) + normal[1] * np.sin(phi))
    return u * u + v * v <= limit * limit


_SHAPES = {"disc": _disc, "square": _square, "triangle": _triangle, "ring": _ring,
           "cross": _cross, "star": _star}


def _colour(rng, name: str, up, vp, radius: float) -> np.ndarray:
    """Mix a main colour and a darker second one by the class texture t(up, vp) in
    0..1 (up, vp: shape coordinates in pixels); float32 (h, w, 3)."""
    hue, texture = _STYLE[name]
    hue = rng.uniform() if rng.uniform() < RANDOM_HUE_P else hue + rng.uniform(-1, 1) * HUE_JITTER
    sat, val = rng.uniform(0.55, 1.0), rng.uniform(0.65, 1.0)
    main = np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), np.float32)
    second = np.array(colorsys.hsv_to_rgb((hue + 0.03) % 1.0, sat * 0.6, val * 0.45),
                      np.float32)
    period = float(np.clip(radius / 3, 2.5, 9.0) * rng.uniform(0.8, 1.25))
    t = _texture(rng, texture, up, vp, period, radius).astype(np.float32)
    return main + (second - main) * t[..., None]


def _texture(rng, kind: str, up, vp, period: float, radius: float) -> np.ndarray:
    """The texture value in 0..1 at every pixel (shape coordinates in pixels)."""
    if kind == "stripes":
        return np.mod((up + 0.4 * vp) / period, 1.0) < 0.5
    if kind == "checks":
        return np.mod(np.floor(up / period) + np.floor(vp / period), 2.0)
    if kind == "rings":
        return np.mod(np.floor(np.sqrt(up * up + vp * vp) / period), 2.0)
    if kind == "dots":
        du, dv = np.mod(up / period, 1.0) - 0.5, np.mod(vp / period, 1.0) - 0.5
        return du * du + dv * dv < 0.1
    if kind == "speckle":
        return rng.uniform(0.0, 1.0, up.shape) ** 2
    return 0.6 * (up * up + vp * vp) / (radius * radius)     # solid, shaded to the rim
