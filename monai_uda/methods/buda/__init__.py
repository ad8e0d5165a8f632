"""BUDA-Seg: a variance map and the variational sampling Dice loss in pseudo-label rounds.

Li, Toussaint, Evans and Liu, "Unsupervised domain adaptation for cerebellum segmentation" (BUDA-Seg).

- :mod:`.variance_head`: the network that returns logits O and the variance map V in one pass.
- :mod:`.variational_dice`: Eq. 1-3, the variational sampling Dice loss (and the plain squared Dice).
- :mod:`.variance_trainer`: the supervised trainer step for (O, V).
- :mod:`.mc_dropout`: the MC-dropout rectification baseline (Wu et al.).
- :mod:`.rounds`: BUDA-Seg and its baselines as configurations of the self-training engine.
"""
