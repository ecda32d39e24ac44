"""The synthetic dataset: valid COCO json, every size range, occlusion, determinism, reuse."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("torchvision")
coco_api = pytest.importorskip("pycocotools.coco")

from fgdkern.train.synthetic import (  # noqa: E402
    CLASSES, MIN_VISIBLE, make_synthetic_coco, render_image)

SMALL, LARGE = 32 ** 2, 96 ** 2


def _make(path, **kw):
    args = dict(num_train=30, num_val=8, image_size=192, seed=0)
    args.update(kw)
    return make_synthetic_coco(path, **args)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("syn") / "data")


def _load(root, split):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("split,count", [("train", 30), ("val", 8)])
def test_pycocotools_loads_consistent_json(root, split, count):
    from PIL import Image
    coco = coco_api.COCO(str(root / "annotations" / f"instances_{split}.json"))
    assert len(coco.imgs) == count
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(CLASSES)
    assert sorted(coco.cats) == list(range(1, len(CLASSES) + 1))
    anns = coco.dataset["annotations"]
    assert len({a["id"] for a in anns}) == len(anns) and len(anns) >= count
    for a in anns:
        img = coco.imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert a["category_id"] in coco.cats and a["iscrowd"] == 0
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= img["width"] and y + h <= img["height"]
        assert 0 < a["area"] <= w * h
    for img in coco.imgs.values():
        with Image.open(root / split / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
        assert coco.getAnnIds(imgIds=img["id"])          # every image has an object


def test_every_coco_size_range_and_several_aspect_ratios(root):
    data = _load(root, "train")
    areas = np.array([a["area"] for a in data["annotations"]])
    assert (areas < SMALL).any() and (areas > LARGE).any()
    assert ((areas >= SMALL) & (areas <= LARGE)).any()
    assert len({(i["width"], i["height"]) for i in data["images"]}) > 1
    assert len({a["category_id"] for a in data["annotations"]}) == len(CLASSES)


def test_fixed_image_size(tmp_path):
    data = _load(_make(tmp_path / "d", num_train=4, num_val=2, image_size=(128, 160)), "val")
    assert {(i["width"], i["height"]) for i in data["images"]} == {(160, 128)}


def test_occlusion_keeps_a_visible_share():
    rng = np.random.default_rng(0)
    objects = [o for _ in range(40) for o in render_image(rng, 192, 192)[1]]
    hidden = [o["area"] < o["pixels"] for o in objects]
    assert any(hidden) and not all(hidden)
    assert all(o["area"] >= MIN_VISIBLE * o["pixels"] for o in objects)
    for o in objects:
        assert o["pixels"] <= o["bbox"][2] * o["bbox"][3]


def test_same_seed_same_files_other_seed_differs(root, tmp_path):
    assert _files(_make(tmp_path / "again")) == _files(root)
    other = _make(tmp_path / "other", seed=1)
    assert _load(other, "train") != _load(root, "train")


def test_reuses_a_complete_copy_and_rebuilds_a_different_one(tmp_path):
    path = _make(tmp_path / "d", num_train=3, num_val=2)
    marker = path / "annotations" / "instances_train.json"
    stamp = marker.stat().st_mtime_ns
    assert _make(tmp_path / "d", num_train=3, num_val=2) == path
    assert marker.stat().st_mtime_ns == stamp
    _make(tmp_path / "d", num_train=5, num_val=2)
    assert len(_load(path, "train")["images"]) == 5 and len(os.listdir(path / "train")) == 5
    assert sorted(os.listdir(tmp_path)) == ["d"]         # no temporary folders left


def test_rebuilds_an_incomplete_copy(tmp_path):
    path = _make(tmp_path / "d", num_train=3, num_val=2)
    (path / "val" / sorted(os.listdir(path / "val"))[0]).unlink()
    _make(tmp_path / "d", num_train=3, num_val=2)
    assert len(os.listdir(path / "val")) == 2


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="synthetic.json"):
        _make(tmp_path / "mine", num_train=2, num_val=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("kw,match", [
    (dict(num_train=0), "num_train"), (dict(num_val=-1), "num_val"),
    (dict(image_size=16), "image_size"), (dict(image_size=(64, 64, 3)), "image_size"),
])
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _make(tmp_path / "d", **kw)
