"""Self-training of early features.

Sheikh and Schultz, "Unsupervised domain adaptation for medical image segmentation via self-training of
early features" (MIDL 2022).

- :mod:`.early_head`: the early head on the first layers of a source U-Net.
- :mod:`.refinement`: Eq. 1 and Eq. 2, the agreement Dice and the refinement modes.
- :mod:`.refinement_engine`: stage 3 (early-layer refinement) as a MONAI trainer, and one-shot refinement.
- :mod:`.agreement_early_stop`: the stopping rule on the early/final agreement.
"""
