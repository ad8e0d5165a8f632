"""Shallow-to-deep: random forests, the Prediction Enhancer and the pseudo-label network.

Matskevych, Wolny, Pape and Kreshuk, "From shallow to deep: exploiting feature-based classifiers for domain
adaptation in semantic segmentation".

- :mod:`.pixel_features`, :mod:`.forests`, :mod:`.random_forest_probability`: the feature-based classifiers.
- :mod:`.scribbles`: brushstroke items (user files, or a documented simulator for benchmarks).
- :mod:`.s2d`: the Prediction Enhancer input and the pseudo-label network loss (Eq. 1-8).
- :mod:`.pseudo_label_update`: the pseudo-label network's trainer step with the mean teacher.
- :mod:`.workflow`: the stages the ``shallow2deep_segmentation`` bundle runs.
"""
