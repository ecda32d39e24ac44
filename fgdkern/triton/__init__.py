"""Triton kernels of the fused passes; each pass is one module named after what it computes.

fgd_stats.py, fgd_grad.py   the two FGD passes (contract: fgdkern.reference.fgd_passes)
fgd_terms.py,               FGD's small math between them, and its backward
fgd_terms_grad.py           (contract: fgdkern.reference.fgd_small_math)
imitation_stats.py,         the two imitation passes of FKD and PFI
imitation_grad.py           (contract: fgdkern.reference.imitation_passes)
pfi_math.py                 PFI's small math between the imitation passes
fkd_terms.py,               FKD's small math between them (the code variant), and its
fkd_terms_grad.py           backward (contract: fgdkern.reference.fkd_small_math)
fkd_paper.py                the paper variant's masks, terms and backward (the same contract)
cwd_stats.py, cwd_grad.py   the channel-softmax passes of CWD and the channel-moment
pkd_stats.py, pkd_grad.py   passes of PKD (contract: fgdkern.reference.channel_passes)
tiles.py                    addressing, loading, storing and reducing tiles of feature maps
merges.py                   exact merges of partial reductions (online softmax, Chan's moments)
levels.py                   every pyramid level in one launch: the level table, runs, checks
sweeps.py                   a run of blocks one channel chunk at a time: folds and maps
level_math.py               the small math between two passes, every level in one launch

Importing this package needs triton; callers import it lazily.
"""
from fgdkern.triton.cwd_grad import cwd_coef, cwd_grad
from fgdkern.triton.cwd_stats import cwd_levels, cwd_stats
from fgdkern.triton.fgd_grad import fgd_grad
from fgdkern.triton.fgd_stats import fgd_stats
from fgdkern.triton.fgd_terms import fgd_terms
from fgdkern.triton.fgd_terms_grad import fgd_terms_grad
from fgdkern.triton.fkd_paper import fkd_paper_masks, fkd_paper_terms, fkd_paper_terms_grad
from fgdkern.triton.fkd_terms import fkd_terms
from fgdkern.triton.fkd_terms_grad import fkd_terms_grad
from fgdkern.triton.imitation_grad import imitation_grad
from fgdkern.triton.imitation_stats import imitation_stats
from fgdkern.triton.pfi_math import pfi_coef, pfi_levels
from fgdkern.triton.pkd_grad import pkd_coef, pkd_grad
from fgdkern.triton.pkd_stats import pkd_levels, pkd_stats

__all__ = ["cwd_coef", "cwd_grad", "cwd_levels", "cwd_stats", "fgd_grad", "fgd_stats", "fgd_terms",
           "fgd_terms_grad", "fkd_paper_masks", "fkd_paper_terms", "fkd_paper_terms_grad",
           "fkd_terms", "fkd_terms_grad", "imitation_grad",
           "imitation_stats", "pfi_coef", "pfi_levels", "pkd_coef", "pkd_grad", "pkd_levels", "pkd_stats"]
