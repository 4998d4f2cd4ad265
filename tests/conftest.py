import os

import pytest
import torch

# Without a GPU the Triton kernels run through Triton's interpreter. The variable is read when a
# kernel is decorated, so it must be set before any slatte kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


TINY_VAE_SCALING = 0.3


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A tiny random diffusers AutoencoderKL (1 channel in, 4 latent channels, 4× down), saved."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=TINY_VAE_SCALING,
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path
