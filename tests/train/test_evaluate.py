"""evaluate(): COCOeval of model outputs, back to category ids, quiet, gathered across ranks."""
import json
import math

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from fgdkern.train import data  # noqa: E402
from fgdkern.train.evaluate import evaluate, to_coco_results  # noqa: E402
from fgdkern.train.synthetic import make_synthetic_coco  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("syn") / "data", num_train=2,
                               num_val=12, image_size=192, seed=0)


class Oracle(torch.nn.Module):
    """Answers every image with its ground truth, boxes moved right by `shift` of
    their width; `keep` = False answers nothing."""

    def __init__(self, dataset, shift=0.0, keep=True):
        super().__init__()
        self.truth = {ds_image.numpy().tobytes(): t for ds_image, t in dataset}
        self.shift, self.keep, self.modes = shift, keep, []

    def forward(self, images):
        self.modes.append(self.training)
        out = []
        for image in images:
            t = self.truth[image.numpy().tobytes()]
            boxes = t["boxes"].clone()
            boxes[:, 0::2] += self.shift * (boxes[:, 2:3] - boxes[:, 0:1])
            n = len(boxes) if self.keep else 0
            out.append({"boxes": boxes[:n], "labels": t["labels"][:n],
                        "scores": torch.linspace(1.0, 0.5, len(boxes))[:n]})
        return out


def _val(root):
    ds = data.CocoDetection(root, "val", train=False)
    return ds, data.build_loader(ds, batch_size=5, workers=0, train=False)


def test_ground_truth_scores_one(root, capsys):
    ds, loader = _val(root)
    model = Oracle(ds)
    m = evaluate(model, loader, ds, "cpu")
    assert m["mAP"] == m["AP50"] == m["AP75"] == pytest.approx(1.0)
    assert all(m[k] > 0.95 for k in ("AP_S", "AP_M", "AP_L"))
    assert m["num_images"] == 12 and m["num_detections"] == len(ds.coco.dataset["annotations"])
    assert capsys.readouterr().out == ""
    assert model.modes == [False] * 3 and model.training


def test_nothing_scores_zero(root):
    ds, loader = _val(root)
    m = evaluate(Oracle(ds, keep=False), loader, ds, "cpu")
    assert m["mAP"] == m["AP50"] == 0.0 and m["num_detections"] == 0


def test_shifted_boxes_score_in_between(root):
    ds, loader = _val(root)
    m = evaluate(Oracle(ds, shift=0.25), loader, ds, "cpu")
    assert 0.0 < m["mAP"] < 1.0 and m["AP50"] > m["AP75"]


def test_results_use_category_ids_and_xywh():
    out = {"boxes": torch.tensor([[1.0, 2.0, 11.0, 7.0]]), "scores": torch.tensor([0.5]),
           "labels": torch.tensor([2])}
    assert to_coco_results(out, 9, {1: 4, 2: 90}) == [
        {"image_id": 9, "category_id": 90, "bbox": [1.0, 2.0, 10.0, 5.0], "score": 0.5}]
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        to_coco_results(dict(out, labels=torch.tensor([3])), 9, {1: 4, 2: 90})


def test_size_without_ground_truth_is_nan(tmp_path):
    from PIL import Image
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val").mkdir()
    Image.new("RGB", (100, 80)).save(tmp_path / "val" / "a.png")
    coco = dict(images=[dict(id=1, file_name="a.png", width=100, height=80)],
                categories=[dict(id=3, name="x")],
                annotations=[dict(id=1, image_id=1, category_id=3, bbox=[10, 10, 40, 40],
                                  area=1600.0, iscrowd=0)])
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    ds, loader = _val(tmp_path)
    m = evaluate(Oracle(ds), loader, ds, "cpu")
    assert m["mAP"] == m["AP_M"] == pytest.approx(1.0)
    assert math.isnan(m["AP_S"]) and math.isnan(m["AP_L"])


# One process of a 2-process gloo group (run with python -c; argv: rank root rendezvous out).
# It imports only what evaluate needs, which keeps the test short.
_RANK = """
import sys, torch
from fgdkern.train import data
from fgdkern.train.evaluate import evaluate
rank, root, rendezvous, out = int(sys.argv[1]), *sys.argv[2:]
torch.distributed.init_process_group("gloo", init_method="file://" + rendezvous,
                                     rank=rank, world_size=2)
ds = data.CocoDetection(root, "val", train=False)
truth = {image.numpy().tobytes(): t for image, t in ds}
calls = []

def model(images):
    calls.append(len(images))
    out = []
    for image in images:
        t = truth[image.numpy().tobytes()]
        boxes = t["boxes"].clone()
        boxes[:, 0::2] += 0.25 * (boxes[:, 2:3] - boxes[:, 0:1])
        out.append({"boxes": boxes, "labels": t["labels"],
                    "scores": torch.linspace(1.0, 0.5, len(boxes))})
    return out

loader = data.build_loader(ds, batch_size=2, workers=0, train=False, distributed=True)
torch.save((evaluate(model, loader, ds, "cpu"), sum(calls)), out)
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_gather_to_the_single_process_result(root, tmp_path):
    import pathlib
    import subprocess
    import sys
    repo = pathlib.Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(r), str(root),
                               str(tmp_path / "rendezvous"), str(tmp_path / f"metrics.{r}")],
                              cwd=repo) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    (m0, seen0), (m1, seen1) = [torch.load(tmp_path / f"metrics.{r}") for r in range(2)]
    ds, loader = _val(root)
    single = evaluate(Oracle(ds, shift=0.25), loader, ds, "cpu")
    assert m0 == m1 == single and seen0 == seen1 == 6
