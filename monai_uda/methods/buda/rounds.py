"""BUDA-Seg (Li et al.) and its two baselines as configurations of the self-training engine.

The pseudo-label rounds (round 0 labels the target with the source model; then ``T`` times: train on the
current pseudo-labels, relabel) are :class:`monai_uda.engines.self_training.SelfTraining`. What differs
between the variants is configuration, in the ``variance_sampling_segmentation`` bundle
(:data:`CONFIGS`; the same network, data, budget and rounds):

- ``buda`` (``adapt.json``): the network is the source ``UDAUNet`` wrapped in a
  :class:`~monai_uda.methods.buda.variance_head.VarianceUNet` (logits O and variance map V from one pass),
  trained with :class:`~monai_uda.methods.buda.variational_dice.VariationalSamplingDiceLoss` (Eq. 1-3, ``K``
  samples) by a :class:`~monai_uda.methods.buda.variance_trainer.VarianceSupervisedTrainer`; argmax pseudo-labels
  (:class:`~monai_uda.engines.pseudo_labellers.ArgmaxLabeller`);
- ``selftrain`` (``adapt.json`` + ``adapt_selftrain.json``): the same rounds without the variance map, plain
  squared Dice (:func:`~monai_uda.methods.buda.variational_dice.plain_dice_loss`; the ablation of the paper's
  Fig. 5), a MONAI ``SupervisedTrainer``;
- ``mcdropout`` (``adapt.json`` + ``adapt_mcdropout.json``): Wu et al.'s MC-dropout rectification
  (:mod:`monai_uda.methods.buda.mc_dropout`): the network gets dropout, the pseudo-labeller
  (:class:`~monai_uda.methods.buda.mc_dropout.MCDropoutLabeller`) takes the mean of ``T`` stochastic passes
  (pixels above an uncertainty threshold optionally ignored), and training weights the cross-entropy of the MC
  mean by ``exp(-u)`` (:class:`~monai_uda.methods.buda.mc_dropout.UncertaintyRectifiedLoss` through
  :class:`~monai_uda.methods.buda.mc_dropout.MCDropoutInferer`).

Target labels are never read: only ``target_training`` images are used. The adapted network is saved as a
plain ``UDAUNet`` state dict (``<ckpt_dir>/model.pt``; the variance head is training-only), atomically.
"""

from __future__ import annotations

__all__ = ["BUNDLE", "CONFIGS"]

#: the bundle of BUDA-Seg and its baselines
BUNDLE = "variance_sampling_segmentation"
#: the layered configs (in ``configs/``) of every variant, e.g.
#: ``python -m monai.bundle run --config_file "['configs/adapt.json','configs/adapt_selftrain.json']"``
CONFIGS: dict[str, list[str]] = {
    "buda": ["adapt.json"],
    "selftrain": ["adapt.json", "adapt_selftrain.json"],
    "mcdropout": ["adapt.json", "adapt_mcdropout.json"],
}
