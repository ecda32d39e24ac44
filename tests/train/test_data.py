"""CocoDetection, the flips, the epoch batch sampler and build_loader."""
import json

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from fgdkern.train import data  # noqa: E402
from fgdkern.train.synthetic import make_synthetic_coco  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("syn") / "data", num_train=16,
                               num_val=6, image_size=128, seed=3)


def _json(root, split):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_items_are_tensors_and_targets_match_the_json(root):
    ds = data.CocoDetection(root, "val", train=False)
    coco = _json(root, "val")
    assert len(ds) == 6 and ds.num_classes == 7
    assert ds.label_to_cat_id == {k: k for k in range(1, 7)}
    for i, info in enumerate(sorted(coco["images"], key=lambda im: im["id"])):
        image, target = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, info["height"], info["width"])
        assert 0.0 <= image.min() and image.max() <= 1.0
        anns = [a for a in coco["annotations"] if a["image_id"] == info["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        assert torch.equal(target["boxes"], boxes.float())
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        assert target["labels"].dtype == torch.int64 and target["iscrowd"].dtype == torch.int64
        assert target["area"].tolist() == [a["area"] for a in anns]
        assert target["image_id"].dtype == torch.int64 and target["image_id"].dim() == 0
        assert int(target["image_id"]) == info["id"]
    assert ds.aspect_ratios() == [im["width"] / im["height"]
                                  for im in sorted(coco["images"], key=lambda im: im["id"])]


def test_flip_is_a_function_of_seed_epoch_index(root):
    a = data.CocoDetection(root, "train", train=True, seed=1)
    b = data.CocoDetection(root, "train", train=True, seed=1)
    draws = [a.flipped(i) for i in range(400)]
    assert draws == [b.flipped(i) for i in range(400)]
    assert 150 < sum(draws) < 250
    a.set_epoch(1)
    assert [a.flipped(i) for i in range(400)] != draws
    c = data.CocoDetection(root, "train", train=True, seed=2)
    assert [c.flipped(i) for i in range(400)] != draws
    assert not any(data.CocoDetection(root, "train", train=False).flipped(i) for i in range(50))


def test_flipped_items_mirror_image_and_boxes(root):
    plain = data.CocoDetection(root, "train", train=False)
    aug = data.CocoDetection(root, "train", train=True, seed=5)
    flips = [i for i in range(len(aug)) if aug.flipped(i)]
    keeps = [i for i in range(len(aug)) if not aug.flipped(i)]
    assert flips and keeps
    for i in flips[:3] + keeps[:1]:
        image, target = aug[i]
        ref_image, ref = plain[i]
        width = ref_image.shape[-1]
        if aug.flipped(i):
            assert torch.equal(image, ref_image.flip(-1))
            expected = torch.stack([width - ref["boxes"][:, 2], ref["boxes"][:, 1],
                                    width - ref["boxes"][:, 0], ref["boxes"][:, 3]], 1)
            assert torch.equal(target["boxes"], expected)
        else:
            assert torch.equal(image, ref_image) and torch.equal(target["boxes"], ref["boxes"])
        assert (target["boxes"][:, 2] > target["boxes"][:, 0]).all()
        assert torch.equal(target["labels"], ref["labels"])


def _hand_made(tmp_path, folder="val2017"):
    """One 20x10 image: a normal box, a crowd box, a box 1 px wide."""
    from PIL import Image
    (tmp_path / "annotations").mkdir()
    (tmp_path / folder).mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / folder / "a.png")
    anns = [dict(id=1, image_id=7, category_id=5, bbox=[2, 1, 6, 4], area=20, iscrowd=0),
            dict(id=2, image_id=7, category_id=9, bbox=[0, 0, 9, 9], area=81, iscrowd=1),
            dict(id=3, image_id=7, category_id=9, bbox=[3, 3, 1, 5], area=5, iscrowd=0)]
    coco = dict(images=[dict(id=7, file_name="a.png", width=20, height=10)], annotations=anns,
                categories=[dict(id=5, name="a"), dict(id=9, name="b")])
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    return tmp_path


def test_drops_crowd_and_thin_boxes_and_reads_coco_layout(tmp_path):
    ds = data.CocoDetection(_hand_made(tmp_path), "val", train=False)
    image, target = ds[0]
    assert image.shape == (3, 10, 20) and torch.all(image[0] == 1) and torch.all(image[1] == 0)
    assert target["boxes"].tolist() == [[2.0, 1.0, 8.0, 5.0]]
    assert target["labels"].tolist() == [1] and ds.label_to_cat_id == {1: 5, 2: 9}
    assert ds.num_classes == 3


def test_missing_files_name_the_path_and_layout(tmp_path, root):
    with pytest.raises(FileNotFoundError, match=r"instances_test\.json.*test/"):
        data.CocoDetection(root, "test", train=False)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="image folder"):
        data.CocoDetection(tmp_path, "val", train=False)
    with pytest.raises(ValueError, match="split"):
        data.CocoDetection(root, "", train=False)


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("size,batch", [(23, 4), (24, 3), (5, 8)])
def test_shuffled_batches_cover_each_index_once(size, batch):
    s = data.EpochBatchSampler(size, batch, shuffle=True, seed=0)
    batches = _epoch(s, 0)
    flat = [i for b in batches for i in b]
    assert len(batches) == len(s) == size // batch
    assert all(len(b) == batch for b in batches)
    assert len(set(flat)) == len(flat) == size - size % batch
    assert _epoch(s, 0) == batches and (size < batch or _epoch(s, 1) != batches)
    keep = data.EpochBatchSampler(size, batch, shuffle=True, seed=0, drop_last=False)
    assert sorted(i for b in _epoch(keep, 0) for i in b) == list(range(size))
    assert len(keep) == len(list(keep))


@pytest.mark.parametrize("size", [40, 41])
def test_two_ranks_see_what_one_rank_with_twice_the_batch_sees(size):
    one = _epoch(data.EpochBatchSampler(size, 6, shuffle=True, seed=4), 2)
    ranks = [_epoch(data.EpochBatchSampler(size, 3, shuffle=True, seed=4, rank=r, world=2), 2)
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for k, batch in enumerate(one):
        assert sorted(batch) == sorted(ranks[0][k] + ranks[1][k])


def test_grouped_batches_keep_bins_and_cover_each_index_once():
    ratios = [(0.75, 1.0, 4 / 3)[(i * 7) % 3] for i in range(50)]
    groups = data.aspect_ratio_groups(ratios, 3)
    assert len(set(groups)) == 3
    s = data.EpochBatchSampler(50, 4, shuffle=True, seed=0, groups=groups)
    batches = _epoch(s, 0)
    flat = [i for b in batches for i in b]
    assert len(batches) == len(s) == 12 and all(len(b) == 4 for b in batches)
    assert len(set(flat)) == len(flat) == 48
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    assert len(mixed) < 3
    assert batches[:len(batches) - len(mixed)] == [b for b in batches if b not in mixed]
    shards = [_epoch(data.EpochBatchSampler(50, 4, shuffle=True, seed=0, rank=r, world=2,
                                            groups=groups), 0) for r in range(2)]
    per_rank = [{i for b in sh for i in b} for sh in shards]
    assert not per_rank[0] & per_rank[1] and len(shards[0]) == len(shards[1]) == 6


def test_aspect_ratio_groups():
    assert data.aspect_ratio_groups([0.4, 0.75, 1.0, 1.3, 3.0], 0) == [0, 0, 1, 1, 1]
    g = data.aspect_ratio_groups([0.4, 0.75, 1.0, 1.3, 3.0], 1)
    assert g == sorted(g) and len(set(g)) == 4
    with pytest.raises(ValueError, match="group_factor"):
        data.aspect_ratio_groups([1.0], -1)


def test_sequential_shards_partition_in_order():
    shards = [list(data.EpochBatchSampler(11, 2, shuffle=False, rank=r, world=3))
              for r in range(3)]
    assert shards[0] == [[0, 3], [6, 9]] and shards[2] == [[2, 5], [8]]
    assert sorted(i for sh in shards for b in sh for i in b) == list(range(11))


def test_build_loader(root):
    ds = data.CocoDetection(root, "train", train=True, seed=0)
    loader = data.build_loader(ds, batch_size=4, workers=0, train=True)
    loader.batch_sampler.set_epoch(1)
    ds.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    images, targets = batches[0]
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 4
    ids = [int(t["image_id"]) for t in targets]
    assert all(im.shape[0] == 3 for im in images) and len(set(ids)) == 4
    val = data.build_loader(data.CocoDetection(root, "val", train=False), batch_size=4,
                            workers=0, train=False)
    assert [len(b[0]) for b in val] == [4, 2]


def test_workers_see_the_epoch(root):
    ds = data.CocoDetection(root, "train", train=True, seed=0)
    loader = data.build_loader(ds, batch_size=16, workers=1, train=True,
                               aspect_ratio_group_factor=-1)
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        (images, _), = list(loader)
        first = loader.batch_sampler.share()[0]
        assert torch.equal(images[0], ds[first][0])


def test_build_loader_rejects_bad_arguments(root):
    ds = data.CocoDetection(root, "val", train=False)
    with pytest.raises(ValueError, match="batch_size"):
        data.build_loader(ds, batch_size=0, workers=0, train=False)
    with pytest.raises(ValueError, match="workers"):
        data.build_loader(ds, batch_size=1, workers=-1, train=False)
    with pytest.raises(RuntimeError, match="init_process_group"):
        data.build_loader(ds, batch_size=1, workers=0, train=True, distributed=True)
