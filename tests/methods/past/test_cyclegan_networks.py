import pytest
import torch

from monai_uda.methods.past.cyclegan_networks import CycleGAN, PatchGANDiscriminator, ResNetGenerator


def test_generator_shapes_2d_3d():
    g = ResNetGenerator(spatial_dims=2, features=4, n_residual=1)
    assert g(torch.randn(2, 1, 32, 24)).shape == (2, 1, 32, 24)
    g3 = ResNetGenerator(spatial_dims=3, in_channels=2, out_channels=1, features=2, n_down=1, n_residual=1)
    assert g3(torch.randn(1, 2, 8, 8, 4)).shape == (1, 1, 8, 8, 4)


def test_generator_residual_output_starts_at_identity():
    g = ResNetGenerator(features=4, n_residual=1, residual_output=True)
    head = g.net[-1].conv
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(g(x), x)


def test_generator_tanh_range():
    y = ResNetGenerator(features=4, n_residual=1, final_act="tanh")(10 * torch.randn(1, 1, 16, 16))
    assert y.abs().max() <= 1.0


def test_generator_bad_input():
    g = ResNetGenerator(features=4, n_residual=1)
    with pytest.raises(ValueError, match="input channels"):
        g(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        g(torch.randn(1, 1, 18, 16))
    with pytest.raises(ValueError, match="residual_output"):
        ResNetGenerator(in_channels=1, out_channels=2, residual_output=True)


def test_discriminator_returns_patch_logits():
    d = PatchGANDiscriminator(channels=4, num_layers_d=2)
    out = d(torch.randn(3, 1, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape[:2] == (3, 1) and out.ndim == 4
    with pytest.raises(ValueError, match="expects"):
        d(torch.randn(3, 2, 32, 32))


def test_cyclegan_container():
    m = CycleGAN(g_features=4, n_residual=1, d_channels=4, d_layers=2)
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(m(x), m.g_st(x))
    keys = {k.split(".")[0] for k in m.state_dict()}
    assert keys == {"g_st", "g_ts", "d_s", "d_t"}
    assert m.generators() == [m.g_st, m.g_ts] and m.discriminators() == [m.d_s, m.d_t]
