"""Adapters from torchvision, mmdet and Ultralytics targets (docs/integrations.md)."""
import pytest
import torch

from fgdkern import targets


def test_torchvision_padded_batch_shape():
    tv = [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([3])},
          {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    boxes, shapes = targets.from_torchvision(tv, torch.Size([800, 1216]))
    assert shapes == [(800, 1216), (800, 1216)]
    assert torch.equal(boxes[0], tv[0]["boxes"]) and boxes[1].shape == (0, 4)


def test_torchvision_per_image_sizes():
    tv = [{"boxes": torch.tensor([[1, 2, 3, 4]])}, {"boxes": torch.tensor([[5, 6, 7, 8]])}]
    boxes, shapes = targets.from_torchvision(tv, [(480, 640), (512, 512)])
    assert shapes == [(480, 640), (512, 512)]
    assert boxes[0].dtype == torch.float32


def test_torchvision_bad_targets():
    with pytest.raises(TypeError, match="targets"):
        targets.from_torchvision([torch.zeros(1, 4)], (10, 10))
    with pytest.raises(ValueError, match="boxes"):
        targets.from_torchvision([{"labels": torch.zeros(1)}], (10, 10))
    with pytest.raises(ValueError, match="image_sizes"):
        targets.from_torchvision([{"boxes": torch.zeros(1, 4)}] * 3, [(10, 10), (10, 10)])


def test_mmdet_drops_padding_rows_and_uses_the_named_shape():
    gt = [torch.tensor([[4.0, 4.0, 20.0, 20.0], [0.0, 0.0, 0.0, 0.0]]), torch.zeros(2, 4)]
    metas = [{"img_shape": (100, 120, 3), "batch_input_shape": (128, 128)},
             {"img_shape": (90, 128, 3), "batch_input_shape": (128, 128)}]
    boxes, shapes = targets.from_mmdet(gt, metas, shape_key="img_shape")
    assert shapes == [(100, 120), (90, 128)]
    assert boxes[0].shape == (1, 4) and boxes[1].shape == (0, 4)
    assert targets.from_mmdet(gt, metas, shape_key="batch_input_shape")[1] == [(128, 128)] * 2
    with pytest.raises(ValueError, match="pad_shape"):
        targets.from_mmdet(gt, metas, shape_key="pad_shape")


def test_ultralytics_batch():
    batch = {"img": torch.zeros(3, 3, 64, 128),
             "batch_idx": torch.tensor([2.0, 0.0, 2.0]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2]])}
    boxes, shapes = targets.from_ultralytics(batch)
    assert shapes == [(64, 128)] * 3
    torch.testing.assert_close(boxes[0], torch.tensor([[0.0, 0.0, 64.0, 32.0]]))
    assert boxes[1].shape == (0, 4)
    torch.testing.assert_close(boxes[2], torch.tensor([[32.0, 16.0, 96.0, 48.0],
                                                       [0.0, 0.0, 25.6, 12.8]]))


def test_ultralytics_bad_batch():
    with pytest.raises(ValueError, match="batch_idx"):
        targets.from_ultralytics({"img": torch.zeros(1, 3, 8, 8), "bboxes": torch.zeros(1, 4)})
    with pytest.raises(ValueError, match="batch_idx"):
        targets.from_ultralytics({"img": torch.zeros(1, 3, 8, 8), "batch_idx": torch.tensor([1]),
                                  "bboxes": torch.zeros(1, 4) + 0.5})
