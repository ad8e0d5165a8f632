"""PAST: pixel alignment (CycleGAN) and top-q self-training, with FDA and histogram-matching baselines.

Dong, Yu, Zhao, Dong and Zhang, "Unsupervised domain adaptation in semantic segmentation based on pixel
alignment and self-training (PAST)".

- :mod:`.cyclegan_networks`, :mod:`.cyclegan_losses`, :mod:`.cyclegan_trainer`: the translation network.
- :mod:`.top_q`: Algorithm 1's top-q pseudo-labeller and the ROI crop.
- :mod:`.past`: translation data, translated datalists and the top-q self-training rounds.
- :mod:`.fourier_domain_adaptation`, :mod:`.histogram_matching`: the pixel-alignment baselines.
"""
