"""fgdkern.retinanet against direct computations on torchvision RetinaNets.

Level maps against the head's own per-level convolutions; matches against what
RetinaNet.compute_loss passes to its head; positives and logits against an
explicit loop over images and instances with torchvision's matcher.
"""
import pytest
import torch

pytest.importorskip("torchvision")

from torchvision.ops import box_iou  # noqa: E402

from fgdkern import retinanet as R  # noqa: E402
from fgdkern.train import models  # noqa: E402

NUM_CLASSES = 4


def detector(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(arch="retinanet", backbone="resnet18", num_classes=NUM_CLASSES, fpn_channels=16,
               min_size=64, max_size=64, anchor_scale=0.25, **kw)
    return models.build_detector(models.DetectorConfig(**cfg)).eval()


@pytest.fixture(scope="module")
def pair():
    return detector(0), detector(1)


def batch(boxes_per_image):
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(k))
              for k in range(len(boxes_per_image))]
    targets = [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.arange(1, len(b) + 1) % NUM_CLASSES}
               for b in boxes_per_image]
    return images, targets


def run(model, il, feats=None):
    feats = model.backbone(il.tensors) if feats is None else feats
    maps = list(feats.values())
    return feats, model.head(maps), model.anchor_generator(il, maps)


BOXES = [[[8.0, 10.0, 40.0, 50.0], [30.0, 4.0, 60.0, 20.0]], [[2.0, 2.0, 20.0, 30.0]]]


def test_level_maps_are_the_heads_convolutions(pair):
    model = pair[0]
    images, targets = batch(BOXES)
    il, _ = model.transform(images, targets)
    with torch.no_grad():
        feats, out, _ = run(model, il)
        head = model.head.classification_head
        direct = [head.cls_logits(head.conv(f)) for f in feats.values()]
        maps = R.level_maps(out["cls_logits"], feats, head.num_anchors)
        probs = R.probability_maps(out["cls_logits"], list(feats.values()), head.num_anchors)
    assert len(maps) == len(direct) == 5
    for m, d, p in zip(maps, direct, probs):
        assert m.shape == d.shape == (2, head.num_anchors * NUM_CLASSES, *d.shape[-2:])
        assert torch.equal(m, d)
        torch.testing.assert_close(p, d.sigmoid())   # vectorised sigmoid: last-bit differences


def test_matches_are_those_of_retinanets_loss(pair, monkeypatch):
    model = pair[0]
    images, targets = batch([BOXES[0], []])
    il, targets = model.transform(images, targets)
    with torch.no_grad():
        _, out, anchors = run(model, il)
        seen = {}
        monkeypatch.setattr(model.head, "compute_loss",
                            lambda t, h, a, m: seen.setdefault("matched", m))
        model.compute_loss(targets, out, anchors)
    mine = R.match_anchors(model, anchors, targets)
    assert len(mine) == 2 and all(torch.equal(a, b) for a, b in zip(mine, seen["matched"]))
    assert (mine[0] >= 0).any() and (mine[1] == -1).all()


def explicit(model, anchors, targets, logits_S, logits_T):
    """(instance, anchor, s, t) of every positive, one instance at a time."""
    rows, offset = [], 0
    for n, (a, t) in enumerate(zip(anchors, targets)):
        if len(t["boxes"]):
            matched = model.proposal_matcher(box_iou(t["boxes"], a))
            for j in range(len(t["boxes"])):
                label = int(t["labels"][j])
                for i in torch.nonzero(matched == j).flatten().tolist():
                    rows.append((offset + j, i, float(logits_S[n, i, label]),
                                 float(logits_T[n, i, label])))
        offset += len(t["boxes"])
    return sorted(rows)


@pytest.mark.parametrize("boxes", [BOXES, [[], BOXES[0], []], [BOXES[1], [], BOXES[0]]],
                         ids=["two-images", "empty-first-last", "empty-middle"])
def test_rank_mimicking_inputs_against_a_loop(pair, boxes):
    student, teacher = pair
    images, targets = batch(boxes)
    il, targets = student.transform(images, targets)
    feats_S, out_S, anchors = run(student, il)
    with torch.no_grad():
        _, out_T, _ = run(teacher, il)
    s, t, ids = R.rank_mimicking_inputs(student, anchors, targets, out_S["cls_logits"],
                                        out_T["cls_logits"], teacher=teacher)
    assert s.shape == t.shape == ids.shape and ids.dtype == torch.int64
    assert s.requires_grad and not t.requires_grad
    got = sorted(zip(ids.tolist(), R.positive_anchors(
        R.match_anchors(student, anchors, targets), targets).anchor.tolist(),
        s.tolist(), t.tolist()))
    want = explicit(student, anchors, targets, out_S["cls_logits"].detach(), out_T["cls_logits"])
    assert got == want and len(want) > 0
    # every box of the batch has positives (low-quality matches) and its own id
    assert sorted(set(ids.tolist())) == list(range(sum(len(b) for b in boxes)))


def test_positives_are_ordered_by_image_and_anchor(pair):
    model = pair[0]
    images, targets = batch([BOXES[1], [], BOXES[0]])
    il, targets = model.transform(images, targets)
    with torch.no_grad():
        _, _, anchors = run(model, il)
    pos = R.positive_anchors(R.match_anchors(model, anchors, targets), targets)
    key = pos.image * anchors[0].shape[0] + pos.anchor
    assert torch.equal(key, key.sort().values)
    assert 1 not in pos.image.tolist()
    assert set(pos.instance[pos.image == 2].tolist()) == {1, 2}   # offset: image 0's box
    assert torch.equal(pos.label, torch.cat([t["labels"] for t in targets])[pos.instance])


def test_no_boxes_gives_empty_inputs(pair):
    student, teacher = pair
    images, targets = batch([[], []])
    il, targets = student.transform(images, targets)
    with torch.no_grad():
        _, out_S, anchors = run(student, il)
        _, out_T, _ = run(teacher, il)
    s, t, ids = R.rank_mimicking_inputs(student, anchors, targets, out_S["cls_logits"],
                                        out_T["cls_logits"])
    assert s.shape == t.shape == ids.shape == (0,)


@pytest.mark.parametrize("other, message", [
    (dict(anchor_scale=0.5), "sizes"),
    (dict(num_classes=NUM_CLASSES + 1), "num_classes"),
])
def test_mismatched_anchors_are_refused(pair, other, message):
    student = pair[0]
    cfg = dict(num_classes=other.pop("num_classes", NUM_CLASSES))
    torch.manual_seed(0)
    teacher = models.build_detector(models.DetectorConfig(
        arch="retinanet", backbone="resnet18", fpn_channels=16, min_size=64, max_size=64,
        anchor_scale=other.get("anchor_scale", 0.25), **cfg))
    with pytest.raises(ValueError, match=f"same anchors.*{message}"):
        R.check_same_anchors(student, teacher)
    with pytest.raises(ValueError, match="same anchors"):
        R.rank_mimicking_inputs(student, [], [], torch.zeros(0, 1, 1), torch.zeros(0, 1, 1),
                                teacher=teacher)


def test_shape_errors(pair):
    student = pair[0]
    images, targets = batch(BOXES)
    il, targets = student.transform(images, targets)
    with torch.no_grad():
        feats, out, anchors = run(student, il)
    logits = out["cls_logits"]
    with pytest.raises(ValueError, match="cls_logits_S .* and cls_logits_T .* differ"):
        R.rank_mimicking_inputs(student, anchors, targets, logits, logits[:, :-9])
    with pytest.raises(ValueError, match="anchors .* do not fit"):
        R.rank_mimicking_inputs(student, anchors[:1], targets[:1], logits, logits)
    with pytest.raises(ValueError, match="anchors has 2 images, targets 1"):
        R.rank_mimicking_inputs(student, anchors, targets[:1], logits, logits)
    with pytest.raises(ValueError, match="does not fit features"):
        R.level_maps(logits, list(feats.values())[:4], 9)
    with pytest.raises(ValueError, match="does not fit features"):
        R.probability_maps(logits, feats, 3)
    with pytest.raises(TypeError, match="num_anchors"):
        R.level_maps(logits, feats, 0)
    with pytest.raises(TypeError, match="cls_logits must be a torch.Tensor"):
        R.level_maps(logits.tolist(), feats, 9)
    with pytest.raises(ValueError, match="cls_logits must be the head's"):
        R.level_maps(logits[0], feats, 9)
    with pytest.raises(TypeError, match="features must be"):
        R.level_maps(logits, feats["0"], 9)
    with pytest.raises(ValueError, match=r"targets\[0\] needs"):
        R.match_anchors(student, anchors, [{"boxes": t["boxes"]} for t in targets])
    with pytest.raises(TypeError, match="anchor_generator"):
        R.check_same_anchors(torch.nn.Linear(1, 1), student)
