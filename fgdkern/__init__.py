"""fgdkern: exact fused kernels for detector knowledge-distillation losses.

Public API (docs/README.md): FGDLoss, MultiLevelFGDLoss, FKDLoss,
MultiLevelFKDLoss, PFILoss, CWDLoss, PKDLoss, MGDLoss, RankMimickingLoss and
ScoreWeightedL2Loss (Ultralytics' built-in YOLO distillation loss),
rasterize_boxes, the target
adapters of fgdkern.targets, PFI's and RM's inputs from a torchvision RetinaNet
(fgdkern.retinanet, imported on use), load_fgd_checkpoint /
export_fgd_checkpoint (checkpoints of the widely used FGD code),
check_loss_scale, and HAS_EXT / cpu_isa(): whether the C++ extension loaded
and which ISA variant of its CPU kernels runs.
"""
from fgdkern._ext import HAS_EXT, cpu_isa
from fgdkern.losses.fgd import FGDLoss, MultiLevelFGDLoss, preset
from fgdkern.losses.fkd import FKDLoss, MultiLevelFKDLoss
from fgdkern.losses.scale import check_loss_scale
from fgdkern.losses.fgd_checkpoint import export_fgd_checkpoint, load_fgd_checkpoint
from fgdkern.losses.pfi import PFILoss
from fgdkern.losses.cwd import CWDLoss
from fgdkern.losses.pkd import PKDLoss
from fgdkern.losses.mgd import MGDLoss
from fgdkern.losses.rm import RankMimickingLoss
from fgdkern.losses.score_l2 import ScoreWeightedL2Loss
from fgdkern.ops.rasterize import rasterize_boxes
from fgdkern.reference.fgd import FGDTerms
from fgdkern import targets

__version__ = "0.1.0"
__all__ = ["FGDLoss", "MultiLevelFGDLoss", "FGDTerms", "rasterize_boxes", "preset", "targets",
           "FKDLoss", "MultiLevelFKDLoss",
           "check_loss_scale", "PFILoss", "CWDLoss", "PKDLoss", "MGDLoss", "RankMimickingLoss", "ScoreWeightedL2Loss",
           "load_fgd_checkpoint", "export_fgd_checkpoint",
           "HAS_EXT", "cpu_isa", "__version__"]
