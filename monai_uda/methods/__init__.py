"""One package per adaptation method, each holding its networks, losses, update steps, handlers and stages.

- :mod:`~monai_uda.methods.bn_reestimation`: Stenger et al., BatchNorm re-estimation (Algorithm 1) and the
  target-normalised Wasserstein-2 feature shift.
- :mod:`~monai_uda.methods.early_features`: Sheikh and Schultz, self-training of early features.
- :mod:`~monai_uda.methods.buda`: BUDA-Seg, variance map and variational sampling Dice loss (with its
  self-training and MC-dropout baselines).
- :mod:`~monai_uda.methods.shallow2deep`: Matskevych et al., shallow-to-deep (random forests, Prediction
  Enhancer, pseudo-label network).
- :mod:`~monai_uda.methods.past`: PAST, pixel alignment (CycleGAN) and top-q self-training (with FDA and
  histogram-matching baselines).

Generic parts (data, transforms, the U-Net, metrics, the self-training engine) live in the type folders;
they never import a method package (``docs/architecture.md``).
"""
