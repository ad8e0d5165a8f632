"""CycleGAN-family networks for unpaired pixel alignment (PAST, Dong et al., step 2 of Algorithm 1).

PAST translates source-modality slices into the target modality with an unpaired image-to-image
translation network ``T`` (the paper uses NICE-GAN, a CycleGAN extension) and trains the segmenter
on the translated source. Here ``T`` is a plain CycleGAN built from MONAI pieces:

- :class:`ResNetGenerator`: the CycleGAN "ResNet" generator (stem, strided downsampling, residual
  blocks, transposed-conv upsampling, 1-channel head) built from ``monai.networks.blocks.Convolution``
  and ``ResidualUnit``. MONAI has no image-to-image ResNet generator (``monai.networks.nets.Generator``
  decodes a latent vector), hence this small class.
- :class:`PatchGANDiscriminator`: ``monai.networks.nets.PatchDiscriminator`` returning only its patch
  logits (MONAI's returns every intermediate feature map, which MONAI's ``PatchAdversarialLoss`` would
  read as a multi-scale list).
- :class:`CycleGAN`: the four networks in one module (``g_st``: source→target, ``g_ts``:
  target→source, ``d_s``/``d_t``: discriminators of each domain), so one ``state_dict`` checkpoints them.

Both 2D (slice-wise, as the paper) and 3D work; defaults are light enough for CPU tests.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Act
from monai.networks.nets import PatchDiscriminator
from torch import nn

__all__ = ["ResNetGenerator", "PatchGANDiscriminator", "CycleGAN"]


class ResNetGenerator(nn.Module):
    """CycleGAN ResNet generator (Zhu et al. 2017) from MONAI blocks.

    ``stem (k=7) -> n_down x [stride-2 conv, channels x2] -> n_residual x ResidualUnit
    -> n_down x [stride-2 transposed conv, channels /2] -> head conv (k=7) [-> final_act]``.

    Args:
        spatial_dims: 2 (slice-wise translation, the paper's choice) or 3.
        in_channels: input image channels.
        out_channels: output image channels (defaults to ``in_channels``).
        features: channels after the stem; doubled at every downsampling.
        n_down: number of stride-2 downsamplings (input sizes must be divisible by ``2**n_down``).
        n_residual: residual blocks at the bottleneck (CycleGAN uses 6 or 9; 2-3 suffice for small slices).
        norm: MONAI norm spec, instance norm as in CycleGAN.
        act: MONAI activation spec.
        final_act: ``None`` (linear output, suited to z-scored MRI) or a MONAI activation name such as
            ``"tanh"`` for images scaled to ``[-1, 1]``.
        residual_output: if True, return ``x + net(x)`` (needs ``in_channels == out_channels``); the
            generator then starts close to the identity, which stabilises short CPU trainings.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        features: int = 16,
        n_down: int = 2,
        n_residual: int = 3,
        norm: str | tuple = "instance",
        act: str | tuple = "relu",
        final_act: str | None = None,
        residual_output: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        out_channels = in_channels if out_channels is None else out_channels
        if in_channels < 1 or out_channels < 1 or features < 1:
            raise ValueError(
                f"in_channels, out_channels and features must be >= 1, got {in_channels}, {out_channels}, {features}."
            )
        if n_down < 0 or n_residual < 0:
            raise ValueError(f"n_down and n_residual must be >= 0, got {n_down}, {n_residual}.")
        if residual_output and in_channels != out_channels:
            raise ValueError("residual_output=True needs in_channels == out_channels.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_down = n_down
        self.residual_output = residual_output

        layers: list[nn.Module] = [
            Convolution(spatial_dims, in_channels, features, kernel_size=7, norm=norm, act=act, adn_ordering="NA")
        ]
        ch = features
        for _ in range(n_down):
            layers.append(
                Convolution(spatial_dims, ch, ch * 2, strides=2, kernel_size=3, norm=norm, act=act, adn_ordering="NA")
            )
            ch *= 2
        for _ in range(n_residual):
            layers.append(
                ResidualUnit(
                    spatial_dims, ch, ch, kernel_size=3, subunits=2, norm=norm, act=act, adn_ordering="NA",
                    last_conv_only=True,
                )
            )
        for _ in range(n_down):
            layers.append(
                Convolution(
                    spatial_dims, ch, ch // 2, strides=2, kernel_size=3, norm=norm, act=act, adn_ordering="NA",
                    is_transposed=True, padding=1, output_padding=1,
                )
            )
            ch //= 2
        layers.append(Convolution(spatial_dims, ch, out_channels, kernel_size=7, conv_only=True))
        if final_act is not None:
            layers.append(Act[final_act]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"ResNetGenerator expects a (B, C, {'H, W' if self.spatial_dims == 2 else 'H, W, D'}) tensor, "
                f"got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"ResNetGenerator expects {self.in_channels} input channels, got {x.shape[1]}.")
        factor = 2**self.n_down
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(f"ResNetGenerator input spatial size {tuple(x.shape[2:])} must be divisible by {factor}.")
        y = self.net(x)
        return x + y if self.residual_output else y


class PatchGANDiscriminator(PatchDiscriminator):
    """``monai.networks.nets.PatchDiscriminator`` whose forward returns only the patch logits.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        channels: channels of the first layer (64 in pix2pix/CycleGAN; 16 is enough for CPU tests).
        num_layers_d: strided layers (3 gives the 70x70 PatchGAN receptive field).
        norm: MONAI norm spec, instance norm as in CycleGAN.
        kwargs: passed on to ``PatchDiscriminator``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: int = 16,
        num_layers_d: int = 3,
        norm: str | tuple = "INSTANCE",
        **kwargs,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims, channels=channels, in_channels=in_channels, out_channels=1,
            num_layers_d=num_layers_d, norm=norm, **kwargs,
        )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchGANDiscriminator expects (B, {self.in_channels}, *spatial[{self.spatial_dims}]), "
                f"got shape {tuple(x.shape)}."
            )
        return super().forward(x)[-1]


class CycleGAN(nn.Module):
    """The four CycleGAN networks in one module.

    Attributes:
        g_st: generator source -> target (the translation ``T`` of PAST's Algorithm 1).
        g_ts: generator target -> source.
        d_s: discriminator of real vs. fake source images.
        d_t: discriminator of real vs. fake target images.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (both domains).
        g_features: first-layer channels of the generators.
        n_down: generator downsamplings.
        n_residual: generator residual blocks.
        d_channels: first-layer channels of the discriminators.
        d_layers: discriminator strided layers.
        final_act: generator output activation (``None``: linear).
        residual_output: generators output ``x + net(x)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        g_features: int = 16,
        n_down: int = 2,
        n_residual: int = 3,
        d_channels: int = 16,
        d_layers: int = 3,
        final_act: str | None = None,
        residual_output: bool = False,
    ) -> None:
        super().__init__()
        g_kw = dict(
            spatial_dims=spatial_dims, in_channels=in_channels, features=g_features, n_down=n_down,
            n_residual=n_residual, final_act=final_act, residual_output=residual_output,
        )
        d_kw = dict(spatial_dims=spatial_dims, in_channels=in_channels, channels=d_channels, num_layers_d=d_layers)
        self.g_st = ResNetGenerator(**g_kw)  # type: ignore[arg-type]
        self.g_ts = ResNetGenerator(**g_kw)  # type: ignore[arg-type]
        self.d_s = PatchGANDiscriminator(**d_kw)  # type: ignore[arg-type]
        self.d_t = PatchGANDiscriminator(**d_kw)  # type: ignore[arg-type]

    def generators(self) -> list[nn.Module]:
        return [self.g_st, self.g_ts]

    def discriminators(self) -> list[nn.Module]:
        return [self.d_s, self.d_t]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate source-domain images to the target domain (``g_st``)."""
        return self.g_st(x)
