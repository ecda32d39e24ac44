"""Bad datasets: annotation files that are not COCO's, images missing or not decodable."""
import json

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from fgdkern.train import coco_json, data, errors  # noqa: E402


def _coco(names) -> dict:
    images = [dict(id=i + 1, file_name=n, width=8, height=6) for i, n in enumerate(names)]
    anns = [dict(id=i + 1, image_id=i + 1, category_id=3, bbox=[1, 1, 4, 3], area=12)
            for i in range(len(names))]
    return dict(images=images, annotations=anns, categories=[dict(id=3, name="a")])


def _tiny(root, names=("a.png", "b.jpg", "c.png")):
    """root/annotations/instances_val.json and root/val/ with an 8x6 image per name."""
    from PIL import Image
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    for n in names:
        Image.new("RGB", (8, 6), (200, 10, 10)).save(root / "val" / n)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(_coco(names)))
    return root


def _cut(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_unreadable_reason(tmp_path):
    val = _tiny(tmp_path) / "val"
    assert data.unreadable_reason(val / "a.png") is None
    assert data.unreadable_reason(val / "b.jpg") is None
    assert data.unreadable_reason(val / "none.png") == "no such file"
    (val / "x.png").write_bytes(b"GIF? no")
    assert data.unreadable_reason(val / "x.png") == "not an image (no format PIL reads)"
    for name in ("a.png", "b.jpg"):     # cut short after the header: a broken download
        _cut(val / name, len((val / name).read_bytes()) - 20)
        assert data.unreadable_reason(val / name).startswith("cannot be decoded (")


def test_unreadable_images_leave_the_dataset(tmp_path):
    root = _tiny(tmp_path)
    (root / "val" / "b.jpg").write_bytes(b"junk")
    (root / "val" / "c.png").unlink()
    ds = data.CocoDetection(root, "val", train=False)
    assert len(ds) == 1 and ds.ids == [1] and ds[0][0].shape == (3, 6, 8)
    assert ds.skipped == [f"{root / 'val' / 'b.jpg'}: not an image (no format PIL reads)",
                          f"{root / 'val' / 'c.png'}: no such file"]
    with pytest.raises(errors.DataError) as exc:
        data.CocoDetection(root, "val", train=False, strict=True)
    assert str(exc.value) == (f"{root / 'val' / 'b.jpg'}: not an image (no format PIL reads) "
                              "(2 of the 3 val images cannot be read; without --strict-data "
                              "they are skipped)")


def test_image_damaged_during_the_run_is_one_line(tmp_path):
    """Read in a loader worker, the error comes back with the worker's traceback; its one
    line is the message."""
    root = _tiny(tmp_path)
    ds = data.CocoDetection(root, "val", train=False)
    path = root / "val" / "a.png"
    path.write_bytes(b"junk")
    loader = data.build_loader(ds, batch_size=3, workers=1, train=False)
    with pytest.raises(errors.DataError) as exc:
        list(loader)
    assert errors.one_line(exc.value) == (
        f"{path}: cannot be decoded any more (cannot identify image file '{path}')")


def _broken(dataset: dict, change) -> dict:
    change(dataset)
    return dataset


@pytest.mark.parametrize("content, message", [
    ([], "a COCO annotation file holds a JSON object, not list"),
    ({"images": []}, "no 'categories' list"),
    (_broken(_coco(["a.png"]), lambda d: d["images"][0].pop("file_name")),
     "images[0] has no valid 'file_name' (got None)"),
    (_broken(_coco(["a.png"]), lambda d: d["images"][0].update(width=0)),
     "images[0] has size 0 x 6"),
    (_broken(_coco(["a.png"]), lambda d: d["annotations"][0].update(bbox=[1, 2, 3])),
     "annotations[0] has bbox [1, 2, 3], not 4 numbers"),
    (_broken(_coco(["a.png"]), lambda d: d["annotations"][0].update(image_id=True)),
     "annotations[0] has no valid 'image_id' (got True)"),
    (_broken(_coco(["a.png"]), lambda d: d["annotations"][0].update(image_id=9)),
     "annotations[0] names image_id 9, which is not in 'images'"),
    (_broken(_coco(["a.png"]), lambda d: d["annotations"][0].update(category_id=1)),
     "annotations[0] names category_id 1, which is not in 'categories'"),
])
def test_annotation_layout_errors_name_the_file_and_entry(tmp_path, content, message):
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(content))
    with pytest.raises(errors.DataError) as exc:
        coco_json.read(path)
    assert str(exc.value) == f"{path}: {message}"


def test_annotation_file_that_is_not_text(tmp_path):
    path = tmp_path / "instances_val.json"
    path.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(errors.DataError, match=r"not a JSON text file \(byte 0 is not UTF-8\)"):
        coco_json.read(path)


def test_a_checked_file_reads_as_pycocotools_reads_it(tmp_path):
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(_coco(["a.png", "b.png"])))
    coco = coco_json.read(path)
    assert sorted(coco.imgs) == [1, 2] and coco.imgToAnns[2][0]["bbox"] == [1, 1, 4, 3]
    assert list(coco.cats) == [3]
