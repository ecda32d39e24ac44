"""COCO-format detection data: the dataset, its batch samplers and the loader.

    CocoDetection(root, split, train)   reads root/annotations/instances_{split}.json
                                        (checked: fgdkern.train.coco_json) and the
                                        images of root/{split}/, leaving out those that
                                        cannot be read
    build_loader(dataset, ...)          a DataLoader whose batches are a pure function
                                        of (seed, epoch, rank, world)

The only augmentation is a horizontal flip with probability 1/2, decided from
(seed, epoch, index) rather than a global RNG, so a run resumed at any step sees
the same images as an uninterrupted one. Training batches follow torchvision's
detection reference: a per-epoch permutation, split across processes as
DistributedSampler does, then grouped by aspect ratio so that a batch pads little.
"""
from __future__ import annotations

import bisect
import math
import pathlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fgdkern.train import coco_json
from fgdkern.train.errors import DataError, brief

# Threads that check the images at the start: the work is mostly waiting for the disk.
CHECK_THREADS = 8


class CocoDetection(torch.utils.data.Dataset):
    """Images and box targets of one split of a COCO-format dataset.

    Reads root/annotations/instances_{split}.json and the images named by its
    file_name fields from root/{split}/ (or root/{split}2017/, COCO's own layout).
    Labels are contiguous, 1..num_classes-1 in category id order (0 = background);
    label_to_cat_id maps them back for evaluation.

    Every image is checked once here (unreadable_reason): one that is missing or
    cannot be decoded is left out of the dataset, the same ones on every rank and
    every run, and listed in ``skipped`` ("<path>: <why>"); with strict=True the
    first of them is a DataError instead.
    """

    def __init__(self, root, split: str, train: bool, seed: int = 0, strict: bool = False):
        if not isinstance(split, str) or not split:
            raise ValueError(f"CocoDetection: split must be a non-empty str, got {split!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"CocoDetection: seed must be an int, got {seed!r}")
        self.root = pathlib.Path(root)
        self.split, self.train, self.seed, self.epoch = split, bool(train), seed, 0
        annotation_file = _annotation_file(self.root, split)
        self.image_dir = _image_dir(self.root, split)
        self.coco = coco_json.read(annotation_file)
        self.ids, self.skipped = self._readable(sorted(self.coco.imgs), strict)
        cat_ids = sorted(self.coco.cats)
        self.num_classes = len(cat_ids) + 1
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(cat_ids)}
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def _readable(self, ids: list, strict: bool) -> tuple[list, list[str]]:
        """(the ids of the images that read, "<path>: <why>" for each of the others)."""
        paths = [self.image_dir / self.coco.imgs[i]["file_name"] for i in ids]
        with ThreadPoolExecutor(CHECK_THREADS) as pool:
            reasons = list(pool.map(unreadable_reason, paths))
        skipped = [f"{p}: {why}" for p, why in zip(paths, reasons) if why is not None]
        if skipped and strict:
            raise DataError(f"{skipped[0]} ({len(skipped)} of the {len(ids)} {self.split} "
                            "images cannot be read; without --strict-data they are skipped)")
        return [i for i, why in zip(ids, reasons) if why is None], skipped

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose flips __getitem__ draws (call it every epoch)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"set_epoch: epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, in dataset order, from the json (no decoding)."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def flipped(self, index: int) -> bool:
        """Whether item `index` is flipped this epoch: a function of (seed, epoch, index)."""
        return self.train and bool(_mix(self.seed, self.epoch, index) & 1)

    def __getitem__(self, index: int):
        """(image float32 (3, H, W) in 0..1, target dict); see _target for the dict."""
        info = self.coco.imgs[self.ids[index]]
        path = self.image_dir / info["file_name"]
        try:
            image = _read_image(path)
        except IMAGE_ERRORS as exc:  # it read when the run started: it changed since
            raise DataError(f"{path}: cannot be decoded any more ({brief(exc)})") from None
        target = self._target(info, image.shape[-1], image.shape[-2])
        if self.flipped(index):
            image, target["boxes"] = flip_horizontal(image, target["boxes"])
        return image, target

    def _target(self, info: dict, width: int, height: int) -> dict:
        """boxes float32 (K, 4) x1 y1 x2 y2 in pixels (clipped to the image), labels
        int64 (K,), image_id int64 scalar, area float32 (K,), iscrowd int64 (K,).
        Crowd annotations and boxes of width or height <= 1 are left out."""
        anns = self.coco.imgToAnns.get(info["id"], [])
        anns = [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] > 1
                and a["bbox"][3] > 1]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        return {
            "boxes": boxes,
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns],
                                   dtype=torch.int64),
            "image_id": torch.tensor(info["id"], dtype=torch.int64),
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
        }


def flip_horizontal(image: torch.Tensor, boxes: torch.Tensor):
    """Mirror image (..., H, W) and its xyxy boxes (K, 4); returns new tensors."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped


def _mix(*values: int) -> int:
    """A well-mixed 64-bit integer from non-negative-or-not ints (numpy SeedSequence)."""
    seq = np.random.SeedSequence([v % 2 ** 64 for v in values])
    return int(seq.generate_state(1, np.uint64)[0])


def _annotation_file(root: pathlib.Path, split: str) -> pathlib.Path:
    """root/annotations/instances_{split}.json, or FileNotFoundError saying the layout."""
    path = root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"CocoDetection: no annotation file {path}; a dataset root must hold "
            f"annotations/instances_{split}.json and the images in {split}/ (or {split}2017/)")
    return path


def _image_dir(root: pathlib.Path, split: str) -> pathlib.Path:
    """root/{split}/, else root/{split}2017/, else FileNotFoundError naming both."""
    for name in (split, f"{split}2017"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"CocoDetection: no image folder {root / split} "
                            f"(nor {root / (split + '2017')}) for split {split!r}; the images "
                            f"named in annotations/instances_{split}.json belong there")


def _read_image(path: pathlib.Path) -> torch.Tensor:
    """RGB image file -> float32 (3, H, W) in 0..1."""
    from PIL import Image
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)


# What PIL raises for a file it cannot decode (a damaged PNG chunk is a SyntaxError).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def unreadable_reason(path: pathlib.Path) -> str | None:
    """Why the image file at ``path`` cannot be used; None when it can.

    Cheap where it can be: the header is read, and PIL's verify checks every chunk of a
    PNG. A JPEG that lacks its end marker (a download cut short) is decoded in full.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            kind = im.format
            im.verify()
        if kind == "JPEG" and not _ends_with(path, b"\xff\xd9"):
            _read_image(path)
    except FileNotFoundError:
        return "no such file"
    except UnidentifiedImageError:
        return "not an image (no format PIL reads)"
    except (*IMAGE_ERRORS, Image.DecompressionBombError) as exc:
        return f"cannot be decoded ({brief(exc)})"
    return None


def _ends_with(path: pathlib.Path, tail: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(size - len(tail), 0))
        return f.read() == tail


def collate_fn(batch):
    """[(image, target), ...] -> ([images], [targets]); images keep their sizes."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def aspect_ratio_groups(ratios, group_factor: int) -> list[int]:
    """Group id of every aspect ratio (w / h).

    Edges 2**linspace(-1, 1, 2k + 1) split [1/2, 2] into 2k log-spaced bins, plus
    one bin below and one above (the bins of torchvision's reference); k = 0 only
    separates portrait (< 1) from the rest."""
    if not isinstance(group_factor, int) or group_factor < 0:
        raise ValueError(f"aspect_ratio_groups: group_factor must be an int >= 0, "
                         f"got {group_factor!r}")
    edges = [1.0] if group_factor == 0 else [
        2.0 ** (-1.0 + i / group_factor) for i in range(2 * group_factor + 1)]
    return [bisect.bisect_right(edges, r) for r in ratios]


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices for one process; a pure function of
    (seed, epoch, rank, world).

    shuffle=True (training): a torch.randperm seeded by (seed, epoch), cut to a
    multiple of world (drop_last) or padded with its own head, then this rank's
    share perm[rank::world], as DistributedSampler does. Without groups it is cut
    into consecutive batches; with groups (one id per index), indices go to their
    group's batch, which is given out when full; what is left at the end is batched
    across groups in arrival order. Either way every index of the share appears
    once, and drop_last leaves out only the last len % batch_size.
    shuffle=False (evaluation): indices rank, rank+world, ... in order, unpadded,
    every batch kept (drop_last does not apply).
    """

    def __init__(self, size: int, batch_size: int, *, shuffle: bool, seed: int = 0,
                 rank: int = 0, world: int = 1, groups=None, drop_last: bool = True):
        _check_int("batch_size", batch_size, 1)
        _check_int("world", world, 1)
        if not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"EpochBatchSampler: rank must be in 0..{world - 1}, got {rank!r}")
        if groups is not None and len(groups) != size:
            raise ValueError(f"EpochBatchSampler: {len(groups)} groups for {size} indices")
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
        self.seed, self.rank, self.world = seed, rank, world
        self.groups = None if groups is None else list(groups)
        self.drop_last, self.epoch = drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation __iter__ gives."""
        _check_int("epoch", epoch, 0)
        self.epoch = epoch

    def share(self) -> list[int]:
        """This process's indices of the epoch, in order."""
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world))
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch) % 2 ** 63)
        perm = torch.randperm(self.size, generator=generator).tolist()
        if self.drop_last:
            perm = perm[:len(perm) - len(perm) % self.world]
        else:
            pad = -len(perm) % self.world
            perm += (perm * math.ceil(pad / max(len(perm), 1)))[:pad]
        return perm[self.rank::self.world]

    def __iter__(self):
        share = self.share()
        batches = (_chunks(share, self.batch_size) if self.groups is None
                   else _grouped(share, self.groups, self.batch_size))
        for batch in batches:
            if len(batch) == self.batch_size or not (self.drop_last and self.shuffle):
                yield batch

    def __len__(self) -> int:
        if not self.shuffle:
            return math.ceil(len(range(self.rank, self.size, self.world)) / self.batch_size)
        rounded = (self.size // self.world if self.drop_last
                   else math.ceil(self.size / self.world))
        return rounded // self.batch_size if self.drop_last else math.ceil(
            rounded / self.batch_size)


def _chunks(indices: list[int], size: int):
    """Consecutive slices of `size` (the last may be shorter)."""
    for start in range(0, len(indices), size):
        yield indices[start:start + size]


def _grouped(indices: list[int], groups: list[int], size: int):
    """Batches of one group each, given out as they fill; then the leftovers of all
    groups together in arrival order (the last batch may be shorter)."""
    pending: dict[int, list[tuple[int, int]]] = {}      # group -> [(position, index)]
    for position, i in enumerate(indices):
        batch = pending.setdefault(groups[i], [])
        batch.append((position, i))
        if len(batch) == size:
            yield [i for _, i in pending.pop(groups[i])]
    leftovers = sorted(item for batch in pending.values() for item in batch)
    yield from _chunks([i for _, i in leftovers], size)


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def build_loader(dataset, *, batch_size: int, workers: int, train: bool, seed: int = 0,
                 aspect_ratio_group_factor: int = 3, distributed: bool = False,
                 drop_last: bool = True) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` with an EpochBatchSampler (reachable as
    loader.batch_sampler, which has set_epoch). train: shuffled per epoch, grouped
    by aspect ratio when aspect_ratio_group_factor >= 0 (dataset.aspect_ratios());
    otherwise sequential and never dropping. distributed: this process's share
    (rank and world from torch.distributed, which must be initialised).
    Workers are not persistent, so they see the epoch set by dataset.set_epoch."""
    _check_int("batch_size", batch_size, 1)
    _check_int("workers", workers, 0)
    if not isinstance(aspect_ratio_group_factor, int):
        raise TypeError("aspect_ratio_group_factor must be an int, "
                        f"got {aspect_ratio_group_factor!r}")
    rank, world = _rank_world(distributed)
    groups = None
    if train and aspect_ratio_group_factor >= 0:
        groups = aspect_ratio_groups(dataset.aspect_ratios(), aspect_ratio_group_factor)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=train, seed=seed,
                                rank=rank, world=world, groups=groups, drop_last=drop_last)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                       collate_fn=collate_fn,
                                       pin_memory=torch.cuda.is_available())


def _rank_world(distributed: bool) -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if not distributed:
        return 0, 1
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("build_loader(distributed=True) needs torch.distributed "
                           "initialised first (init_process_group)")
    return dist.get_rank(), dist.get_world_size()
