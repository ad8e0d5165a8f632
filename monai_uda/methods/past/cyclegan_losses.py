"""CycleGAN losses for PAST's pixel-alignment network ``T`` (Dong et al., Algorithm 1 line 2).

The paper trains NICE-GAN, a CycleGAN extension, and does not restate its objective; we use the
CycleGAN objective (Zhu et al. 2017) with least-squares adversarial terms (LSGAN, Mao et al. 2017):

- adversarial, generator side:   ``L_adv^G = E[(D_t(G_st(x_s)) - 1)^2] + E[(D_s(G_ts(x_t)) - 1)^2]``
- adversarial, discriminator side (per domain): ``L_adv^D = 1/2 (E[(D(x_real) - 1)^2] + E[D(x_fake)^2])``
- cycle consistency (L1):        ``L_cyc = E|G_ts(G_st(x_s)) - x_s| + E|G_st(G_ts(x_t)) - x_t|``
- identity (L1):                 ``L_id  = E|G_st(x_t) - x_t| + E|G_ts(x_s) - x_s|``
- generator total:               ``L_G = L_adv^G + lambda_cycle * L_cyc + lambda_identity * L_id``

The least-squares criterion is MONAI's ``PatchAdversarialLoss(criterion="least_squares",
no_activation_leastsq=True)``; discriminator outputs may be a tensor or a list (multi-scale).
"""

from __future__ import annotations

from typing import Callable

import torch
from monai.losses import PatchAdversarialLoss

__all__ = ["cycle_loss", "identity_loss", "CycleGANLoss"]


def _l1(a: torch.Tensor, b: torch.Tensor, name: str) -> torch.Tensor:
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}.")
    return torch.mean(torch.abs(a - b))


def cycle_loss(
    g_st: Callable[[torch.Tensor], torch.Tensor],
    g_ts: Callable[[torch.Tensor], torch.Tensor],
    real_s: torch.Tensor,
    real_t: torch.Tensor,
) -> torch.Tensor:
    """Cycle-consistency loss ``E|G_ts(G_st(x_s)) - x_s| + E|G_st(G_ts(x_t)) - x_t|`` (L1).

    Zero when both generators are the identity (or inverse of each other).
    """
    return _l1(g_ts(g_st(real_s)), real_s, "cycle loss (source)") + _l1(
        g_st(g_ts(real_t)), real_t, "cycle loss (target)"
    )


def identity_loss(
    g_st: Callable[[torch.Tensor], torch.Tensor],
    g_ts: Callable[[torch.Tensor], torch.Tensor],
    real_s: torch.Tensor,
    real_t: torch.Tensor,
) -> torch.Tensor:
    """Identity loss ``E|G_st(x_t) - x_t| + E|G_ts(x_s) - x_s|`` (L1): a generator fed an image of its
    output domain should leave it unchanged."""
    return _l1(g_st(real_t), real_t, "identity loss (target)") + _l1(g_ts(real_s), real_s, "identity loss (source)")


class CycleGANLoss:
    """The weighted CycleGAN objective, split into its generator and discriminator parts.

    Args:
        lambda_cycle: weight of the cycle-consistency term (CycleGAN: 10).
        lambda_identity: weight of the identity term (CycleGAN: ``0.5 * lambda_cycle`` = 5; 0 disables
            the term and saves two generator passes).
        lambda_adv: weight of the generator's adversarial term.
        criterion: ``"least_squares"`` (LSGAN, default), ``"bce"`` or ``"hinge"``, as MONAI's
            ``PatchAdversarialLoss``.
    """

    def __init__(
        self,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 5.0,
        lambda_adv: float = 1.0,
        criterion: str = "least_squares",
    ) -> None:
        weights = {"lambda_cycle": lambda_cycle, "lambda_identity": lambda_identity, "lambda_adv": lambda_adv}
        for name, v in weights.items():
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}.")
        self.lambda_cycle = float(lambda_cycle)
        self.lambda_identity = float(lambda_identity)
        self.lambda_adv = float(lambda_adv)
        self.adversarial = PatchAdversarialLoss(criterion=criterion, no_activation_leastsq=True)

    def generator_loss(
        self,
        g_st: Callable[[torch.Tensor], torch.Tensor],
        g_ts: Callable[[torch.Tensor], torch.Tensor],
        d_s: Callable[[torch.Tensor], torch.Tensor],
        d_t: Callable[[torch.Tensor], torch.Tensor],
        real_s: torch.Tensor,
        real_t: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Generator objective ``L_G`` on an unpaired batch.

        Returns:
            dict with ``"loss"`` (total, to backpropagate), ``"adv"``, ``"cycle"``, ``"identity"`` and the
            fakes ``"fake_t"`` (= G_st(x_s)) and ``"fake_s"`` (= G_ts(x_t)) for the discriminator update.
        """
        fake_t = g_st(real_s)
        fake_s = g_ts(real_t)
        adv = self.adversarial(d_t(fake_t), target_is_real=True, for_discriminator=False) + self.adversarial(
            d_s(fake_s), target_is_real=True, for_discriminator=False
        )
        cyc = _l1(g_ts(fake_t), real_s, "cycle loss (source)") + _l1(g_st(fake_s), real_t, "cycle loss (target)")
        if self.lambda_identity > 0:
            idt = identity_loss(g_st, g_ts, real_s, real_t)
        else:
            idt = torch.zeros((), device=real_s.device)
        total = self.lambda_adv * adv + self.lambda_cycle * cyc + self.lambda_identity * idt
        return {"loss": total, "adv": adv, "cycle": cyc, "identity": idt, "fake_t": fake_t, "fake_s": fake_s}

    def discriminator_loss(
        self, d: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor
    ) -> torch.Tensor:
        """One domain's discriminator objective ``1/2 (L(D(real), 1) + L(D(fake), 0))``; ``fake`` is detached."""
        return 0.5 * (
            self.adversarial(d(real), target_is_real=True, for_discriminator=True)
            + self.adversarial(d(fake.detach()), target_is_real=False, for_discriminator=True)
        )
