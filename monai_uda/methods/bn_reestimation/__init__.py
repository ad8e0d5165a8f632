"""BatchNorm re-estimation and the target-normalised Wasserstein-2 feature shift.

Stenger, Vedrenne, Schultz, Faisan, Baudrier and Naegel, "Fast and interpretable unsupervised domain
adaptation for FIB-SEM cell segmentation".

- :mod:`.reestimation`: Algorithm 1, the BatchNorm statistics of a source model re-estimated on target images.
- :mod:`.reestimation_handler`: the same as an ignite handler (``adapt.json``).
- :mod:`.wasserstein`: the target-normalised W2 distance between Gaussian fits of source and target features.
- :mod:`.shift_report`: ``monai-uda shift``, the per-layer W2 table and plot.
"""
