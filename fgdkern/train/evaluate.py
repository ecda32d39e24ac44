"""COCO box mAP of a torchvision-style detector on a CocoDetection split.

    evaluate(model, loader, dataset, device) -> {"mAP", "AP50", "AP75", "AP_S", "AP_M",
                                                 "AP_L", "num_images", "num_detections"}

The model takes a list of images and returns one dict per image with boxes
(x1, y1, x2, y2 in the input image's pixels, as torchvision's detectors give
them), scores and contiguous labels. Labels go back to category ids through
dataset.label_to_cat_id, boxes to COCO's (x, y, w, h), and pycocotools' COCOeval
scores them against dataset.coco on exactly the images the loader gave.
"""
from __future__ import annotations

import contextlib
import io
import math

import torch

from fgdkern.train import require

METRICS = ("mAP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")     # COCOeval stats[0..5]


@torch.no_grad()
def evaluate(model, loader, dataset, device) -> dict:
    """COCO bbox metrics of `model` (run in eval mode, its mode restored after) on
    the loader's images. Under torch.distributed every rank predicts its share,
    rank 0 gathers them and runs COCOeval, and every rank returns its result.
    Sizes without ground truth give nan; no detections at all give 0.0."""
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        per_image = predict(model, loader, dataset.label_to_cat_id, device)
    finally:
        if was_training:
            model.train()
    per_image = _gather(per_image)
    metrics = None
    if per_image is not None:
        detections = [d for dets in per_image.values() for d in dets]
        metrics = coco_metrics(dataset.coco, sorted(per_image), detections)
    return _broadcast(metrics)


def predict(model, loader, label_to_cat_id: dict, device) -> dict:
    """Run `model` over the loader; returns {image_id: [COCO result dicts]}."""
    per_image = {}
    for images, targets in loader:
        outputs = model([image.to(device) for image in images])
        if len(outputs) != len(targets):
            raise ValueError(f"evaluate: the model returned {len(outputs)} outputs for "
                             f"{len(targets)} images")
        for target, output in zip(targets, outputs):
            image_id = int(target["image_id"])
            per_image[image_id] = to_coco_results(output, image_id, label_to_cat_id)
    return per_image


def to_coco_results(output: dict, image_id: int, label_to_cat_id: dict) -> list[dict]:
    """One image's {boxes (K, 4) xyxy, scores (K,), labels (K,)} -> COCO result dicts
    {image_id, category_id, bbox [x, y, w, h], score}."""
    boxes = output["boxes"].detach().float().cpu().reshape(-1, 4)
    scores = output["scores"].detach().float().cpu().reshape(-1).tolist()
    labels = output["labels"].detach().cpu().reshape(-1).tolist()
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"evaluate: image {image_id} has {len(boxes)} boxes, {len(scores)} "
                         f"scores and {len(labels)} labels")
    unknown = sorted(set(labels) - set(label_to_cat_id))
    if unknown:
        raise ValueError(f"evaluate: labels {unknown} of image {image_id} are no category "
                         f"(known labels: {sorted(label_to_cat_id)})")
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    return [{"image_id": image_id, "category_id": label_to_cat_id[label], "bbox": box,
             "score": score} for box, score, label in zip(xywh, scores, labels)]


def coco_metrics(coco_gt, image_ids: list, detections: list[dict]) -> dict:
    """COCOeval (bbox) of `detections` against `coco_gt` on `image_ids`, quietly."""
    cocoeval = require("pycocotools.cocoeval")
    metrics = {name: math.nan for name in METRICS}
    if image_ids:
        with contextlib.redirect_stdout(io.StringIO()):
            ev = cocoeval.COCOeval(coco_gt, _results_coco(coco_gt, detections), "bbox")
            ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        metrics = {name: float(v) if v >= 0 else math.nan
                   for name, v in zip(METRICS, ev.stats[:6])}
    metrics.update(num_images=len(image_ids), num_detections=len(detections))
    return metrics


def _results_coco(coco_gt, detections: list[dict]):
    """A pycocotools COCO holding `detections` (what COCO.loadRes makes for boxes,
    but also when there are none): ids from 1, area = w * h, not crowd."""
    coco_api = require("pycocotools.coco")
    anns = [dict(d, id=k + 1, area=d["bbox"][2] * d["bbox"][3], iscrowd=0)
            for k, d in enumerate(detections)]
    results = coco_api.COCO()
    results.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": list(coco_gt.dataset["categories"]),
                       "annotations": anns}
    results.createIndex()
    return results


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather(per_image: dict):
    """All ranks' {image_id: results} merged on rank 0 (first copy of an image
    wins); None on the other ranks. Unchanged when not distributed."""
    if not _distributed():
        return per_image
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, per_image)
    if torch.distributed.get_rank() != 0:
        return None
    merged = {}
    for part in parts:
        for image_id, results in part.items():
            merged.setdefault(image_id, results)
    return merged


def _broadcast(metrics):
    """Rank 0's metrics on every rank (they are already there when not distributed)."""
    if not _distributed():
        return metrics
    box = [metrics]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
