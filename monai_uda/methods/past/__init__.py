"""PAST: pixel alignment (an intensity translator, or a CycleGAN) and top-q self-training, with FDA and
histogram-matching baselines.

Dong, Yu, Zhao, Dong and Zhang, "Unsupervised domain adaptation in semantic segmentation based on pixel
alignment and self-training (PAST)".

- :mod:`.intensity_translator`: the default translation network (a per-pixel intensity map searched so that the
  translated source's local patches are distributed as the target's, with a small cycle error).
- :mod:`.cyclegan_networks`, :mod:`.cyclegan_losses`, :mod:`.cyclegan_trainer`: the CycleGAN option and
  ``translate_volume``.
- :mod:`.top_q`: Algorithm 1's top-q pseudo-labeller and the ROI crop.
- :mod:`.past`: translation data, translated datalists and the top-q self-training rounds.
- :mod:`.fourier_domain_adaptation`, :mod:`.histogram_matching`: the pixel-alignment baselines.
"""
