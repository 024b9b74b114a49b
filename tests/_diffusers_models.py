"""What the diffusers tests share: one tiny UNet2DModel built locally (no download) and the
one-torch-thread fixture.

The UNet: 8×8×3, block_out_channels (8, 16), one layer per block, no attention (41.9 k
parameters), seeded, in eval mode. Import diffusers/torch only after
``pytest.importorskip("diffusers")`` in the test module.
"""
import pytest


def tiny_unet(seed: int = 0):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """torch on one thread for the module: the tiny UNet's convolutions are ~13x slower with 2
    threads than with 1 on the shared 2-core CI machine (2.0 s vs 0.15 s for 10 forwards, measured
    under load): thread hand-off dominates."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
