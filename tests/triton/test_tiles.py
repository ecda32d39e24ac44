"""Tiles of feature maps (fgdkern/triton/tiles.py): the LAYOUT a launch is given and the
tile shapes it picks; channels_last maps through both passes."""
import pytest
import torch

from tests.helpers import make_inputs
from tests.triton.common import DEVICE, check_both_passes, needs_kernels

pytestmark = needs_kernels


def test_layout_chosen_for_views():
    """The LAYOUT constexpr holds for every view of a launch (it decides the addressing)."""
    from fgdkern.triton.tiles import CHANNELS_DENSE, GENERAL, PIX_DENSE, choose_layout

    x = torch.empty(2, 8, 5, 6, device=DEVICE)
    cl = x.contiguous(memory_format=torch.channels_last)
    sliced = torch.empty(2, 16, 5, 6, device=DEVICE)[:, ::2]
    cropped = torch.empty(2, 8, 5, 9, device=DEVICE)[..., :6]
    assert choose_layout([x, x[:, :3]]) == PIX_DENSE.value
    assert choose_layout([cl, torch.empty(2, 8, 1, 1, device=DEVICE)]) == CHANNELS_DENSE.value
    assert choose_layout([x, sliced]) == PIX_DENSE.value  # channel stride alone does not matter
    assert choose_layout([x, cropped]) == GENERAL.value
    assert choose_layout([x, cl]) == GENERAL.value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tile_shapes(dtype):
    """Tiles of 1024 elements (512 for GENERAL views, which spill otherwise: test_offline_compile);
    BLOCK_HW a whole number of SECTORs, of 32 bytes in the pixel-dense layout."""
    from fgdkern.triton.tiles import CHANNELS_DENSE, GENERAL, PIX_DENSE, tile_shape

    for layout in (GENERAL.value, PIX_DENSE.value, CHANNELS_DENSE.value):
        block_c, block_hw, sector = tile_shape(dtype, layout)
        assert block_c * block_hw == (512 if layout == GENERAL.value else 1024)
        assert block_hw % sector == 0
        if layout == PIX_DENSE.value:
            assert sector * dtype.itemsize == 32


def test_all_channels_last_float32():
    check_both_passes(make_inputs(2, 37, [(6, 5), (3, 2)], device=DEVICE, layout="channels_last"))
