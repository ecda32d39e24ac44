"""Presets of the training script: named sets of option values (docs/training.md, "Presets").

The value of an option is, in order of precedence: the flag given on the
command line, the preset's value, BASE. ``None`` for an FGD weight or the
temperature means "the official value of the detector's FGD preset"
(fgdkern.preset: retinanet for RetinaNet, two_stage for Faster R-CNN); likewise
for FKD (fgdkern.losses.fkd.preset: one_stage, two_stage). PFI's and RM's
weights are the PFI/RM paper's (1.5 and 4.0). CWD's, PKD's and MGD's are those of the
published FPN distillation configs: CWD tau 1, weight 10; PKD weight 10 for RetinaNet
and 6 for Faster R-CNN (None: the architecture's); MGD alpha 2e-5, lambda 0.65.
"""
from __future__ import annotations

# Every option's value when neither a flag nor the preset sets it.
BASE = dict(
    role="all", out="out/train", data_path=None, data_cache=None, data_seed=0,
    num_train=512, num_val=96, image_size=224,
    arch="retinanet", teacher_backbone="resnet50", student_backbone="resnet18",
    teacher_fpn_channels=256, student_fpn_channels=256, min_size=800, max_size=1333,
    anchor_scale=1.0, norm="auto", trainable_backbone_layers=None,
    teacher=None, teacher_weights=None, teacher_weights_backbone=None, weights=None,
    weights_backbone=None,
    distill="fgd",
    fgd_temp=None, alpha_fgd=None, beta_fgd=None, gamma_fgd=None, lambda_fgd=None,
    fgd_levels=None, fgd_backend="auto", attention_level=0,
    fkd_variant="code", fkd_temp=None, alpha_fkd=None, beta_fkd=None, gamma_fkd=None,
    fkd_levels=None, fkd_backend="auto", pfi_weight=1.5, pfi_backend="auto", rm_weight=4.0,
    rm_backend="auto", cwd_tau=1.0, cwd_weight=10.0, cwd_backend="auto", pkd_weight=None,
    pkd_backend="auto", mgd_alpha=2e-5, mgd_lambda=0.65, mgd_backend="auto",
    batch_size=2, epochs=26, steps=None, teacher_schedule=1.0, lr=0.02, lr_steps=[16.0, 22.0],
    lr_gamma=0.1,
    warmup_steps=1000, warmup_factor=0.001, momentum=0.9, weight_decay=1e-4, clip_grad=35.0,
    amp=False, resume=False, test_only=False, device=None, workers=4, seed=0, print_freq=20,
    ckpt_every=500, aspect_ratio_group_factor=3, eval_batch_size=None, report_images=3,
    strict_data=False,
)

PRESETS = {
    # Each role a few steps on a handful of tiny images: checks every code path (the tests).
    "smoke": dict(
        out="out/smoke", num_train=8, num_val=4, image_size=64,
        teacher_backbone="resnet18", student_backbone="resnet18",
        teacher_fpn_channels=32, student_fpn_channels=16, min_size=64, max_size=64,
        anchor_scale=0.25, batch_size=2, epochs=None, steps=3, lr=0.01, lr_steps=[],
        warmup_steps=2, workers=0, print_freq=1, ckpt_every=2, eval_batch_size=4,
        report_images=2,
    ),
    # The main job: all three roles end to end on the built-in dataset on a 2-core CPU.
    "small": dict(
        out="out/small", num_train=512, num_val=96, image_size=160,
        teacher_backbone="resnet34", student_backbone="resnet18", teacher_schedule=2.0,
        teacher_fpn_channels=128, student_fpn_channels=64, min_size=160, max_size=160,
        anchor_scale=0.25, batch_size=8, epochs=None, steps=300, lr=0.02, lr_steps=[4.0],
        warmup_steps=50, workers=1, print_freq=20, ckpt_every=100, eval_batch_size=8,
        report_images=3,
    ),
    # The FGD paper's RetinaNet setting on COCO: ResNeXt-101 32x8d teacher, ResNet-50
    # student, 2x schedule (24 epochs, lr steps at 16 and 22), 16 images per step
    # (8 processes x 2), the official retinanet FGD weights. Needs --data-path.
    "paper": dict(
        out="out/paper", arch="retinanet", teacher_backbone="resnext101_32x8d",
        student_backbone="resnet50", teacher_fpn_channels=256, student_fpn_channels=256,
        min_size=800, max_size=1333, anchor_scale=1.0, batch_size=2, epochs=24, steps=None,
        lr=0.01, lr_steps=[16.0, 22.0], warmup_steps=500, warmup_factor=0.001,
        weight_decay=1e-4, workers=4, print_freq=50, ckpt_every=2000, eval_batch_size=2,
    ),
}
DEFAULT = "small"
