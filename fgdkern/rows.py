"""The row names of the small statistic tables that fused passes exchange.

A fused pass returns (or reads) float32 tables of shape (N, rows, HW) or
(N, rows, C); each row is one named statistic or coefficient. The names and
their order are fixed here, once: the reference passes, the Triton kernels,
the C++ kernels (tested against these names), the autograd wrappers and the
fake implementations all index by name. docs/kernels.md explains each row.
This module imports nothing, so every layer may use it.
"""
from __future__ import annotations


class Rows:
    """An ordered set of row names: ``rows.x_fg`` is the index of row ``x_fg``."""

    def __init__(self, *names: str):
        if len(set(names)) != len(names):
            raise ValueError(f"row names must be unique, got {names}")
        self.names = tuple(names)
        for index, name in enumerate(names):
            setattr(self, name, index)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __repr__(self) -> str:
        return f"Rows{self.names}"


# FGD statistics pass (docs/kernels.md, "The row tables"): per pixel and per channel.
FGD_PIX = Rows("gs_s", "gs_t", "z_s", "z_t")
FGD_CHAN = Rows("gc_s", "gc_t", "ctx_s", "ctx_t", "sum_d", "m2_d", "x_fg", "x_bg")
# FGD gradient pass (docs/kernels.md, "The row tables"): its coefficient tables.
FGD_PIX_COEF = Rows("a_sign", "fgA", "bgA", "p_s", "p_t")
FGD_CHAN_COEF = Rows("b_sign", "k_d", "k_const", "k_fg", "k_bg", "g_ctx_s", "g_ctx_t",
                     "w_s", "w_t", "ctx_s", "ctx_t")
# Imitation passes, shared by FKD and PFI (docs/kernels.md, "The imitation passes (FKD, PFI)"):
# sums over channels per pixel and over pixels per channel of X, and the
# channel-weighted squared difference of X and Y per pixel; the gradient
# pass's coefficient tables.
IMIT_PIX = Rows("abs_x", "sum_x", "sq_d")
IMIT_CHAN = Rows("abs_x", "sum_x")
IMIT_PIX_COEF = Rows("a", "b", "s")
IMIT_CHAN_COEF = Rows("w", "b", "s")
# Channel-softmax passes of CWD (docs/cwd.md, "How it is computed"): per image and
# channel, the log-sum-exps of S / tau and T / tau over the pixels and the KL divergence
# of the two softmaxes; the gradient pass's coefficient table.
CWD_CHAN = Rows("lse_s", "lse_t", "kl")
CWD_COEF = Rows("lse_s", "lse_t", "k")
# Channel-moment passes of PKD (docs/pkd.md, "How it is computed"): per channel over the
# images and pixels, the means and centred second moments of S and T and their centred
# cross moment; the gradient pass's coefficient table.
PKD_CHAN = Rows("mean_s", "mean_t", "m2_s", "m2_t", "m_st")
PKD_COEF = Rows("a", "mean_s", "b", "mean_t")
# FGD's small math takes each level's GcBlock channel_add MLP as these parameters, in this
# order (docs/fgd.md, "Parameters and initialisation").
GC_MLP = Rows("add1_weight", "add1_bias", "norm_weight", "norm_bias", "add2_weight",
              "add2_bias")
# FKD's small math (code variant) takes each level's channel and spatial mimic layers as
# these parameters, in this order (docs/fkd.md, "Parameters").
FKD_MIMIC = Rows("channel_weight", "channel_bias", "spatial_weight", "spatial_bias")
