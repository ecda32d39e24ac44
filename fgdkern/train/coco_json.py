"""A COCO annotation file, read and checked before anything trusts it.

    read(path) -> pycocotools COCO of the file

A file that is not JSON, or whose content is not COCO's layout, is a DataError
naming the file and where it goes wrong (line and column; the first bad entry),
rather than a traceback from deep inside json or pycocotools. What is checked
is what the training script reads: ``images`` (id, file_name, width, height),
``categories`` (id) and, optional, ``annotations`` (id, image_id,
category_id, bbox, area).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import pathlib

from fgdkern.train import require
from fgdkern.train.errors import DataError

# The keys of an entry of each list, and the type each value must have.
NUMBER = (int, float)
FIELDS = {
    "images": {"id": int, "file_name": str, "width": NUMBER, "height": NUMBER},
    "categories": {"id": int},
    "annotations": {"id": int, "image_id": int, "category_id": int, "bbox": list,
                    "area": NUMBER},
}


def read(path) -> object:
    """pycocotools COCO of the checked annotation file at ``path``, its prints silenced."""
    path = pathlib.Path(path)
    dataset = parse(path)
    check(dataset, path)
    coco_api = require("pycocotools.coco")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_api.COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def parse(path: pathlib.Path):
    """The JSON content of ``path``; DataError with the position when it is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a JSON text file (byte {exc.start} is not UTF-8)") \
            from None


def check(dataset, path: pathlib.Path) -> None:
    """DataError naming the file and the first entry that the training script cannot use."""
    if not isinstance(dataset, dict):
        raise DataError(f"{path}: a COCO annotation file holds a JSON object, not "
                        f"{type(dataset).__name__}")
    for key in ("images", "categories"):
        if key not in dataset:
            raise DataError(f"{path}: no {key!r} list")
    for key, fields in FIELDS.items():
        _check_entries(dataset.get(key, []), key, fields, path)
    _check_references(dataset, path)


def _check_entries(entries, key: str, fields: dict, path: pathlib.Path) -> None:
    if not isinstance(entries, list):
        raise DataError(f"{path}: {key!r} is not a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: {key}[{i}] is not an object")
        for name, kind in fields.items():
            value = entry.get(name)
            # bool is an int to Python, never an id or a size in COCO
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DataError(f"{path}: {key}[{i}] has no valid {name!r} "
                                f"(got {value!r})")


def _check_references(dataset: dict, path: pathlib.Path) -> None:
    """Sizes and boxes are finite, boxes have 4 numbers, each annotation's image and
    category exist."""
    image_ids = {im["id"] for im in dataset["images"]}
    category_ids = {c["id"] for c in dataset["categories"]}
    for i, im in enumerate(dataset["images"]):
        if not all(v > 0 and math.isfinite(v) for v in (im["width"], im["height"])):
            raise DataError(f"{path}: images[{i}] has size {im['width']} x {im['height']}")
    for i, ann in enumerate(dataset.get("annotations", [])):
        box = ann["bbox"]
        if len(box) != 4 or not all(isinstance(v, NUMBER) and math.isfinite(v) for v in box):
            raise DataError(f"{path}: annotations[{i}] has bbox {box!r}, not 4 numbers")
        if ann["image_id"] not in image_ids:
            raise DataError(f"{path}: annotations[{i}] names image_id {ann['image_id']}, "
                            "which is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise DataError(f"{path}: annotations[{i}] names category_id "
                            f"{ann['category_id']}, which is not in 'categories'")
