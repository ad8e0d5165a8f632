"""Which adapted model to trust without target labels: validators that score a segmentation model from its
predictions on unlabelled target images.

Generic: nothing here imports ``monai_uda.methods``. One plain inference pass per candidate gives softmax
probabilities (:func:`predict_probabilities`, :class:`Predictions`) that most validators share; each
validator returns one float, **higher = predicted better**:

=========================  ==========================  ===============================================
family (module)            registered names            extra cost
=========================  ==========================  ===============================================
``entropy``                ``entropy``, ``im``         none
``agreement``              ``source_agreement``,       none (the source's probabilities; every
                           ``consensus``               candidate's argmax maps)
``augmentation``           ``tta``                     6 forward passes per image (default set)
``dropout_disagreement``   ``mc_dropout``              ``num_samples`` passes per image (8); plus
                                                       :func:`ensemble_disagreement_score`, unregistered
``label_statistics``       ``foreground_fraction``,    none (statistics of the *source* labels)
                           ``component_sizes``
``mixval``                 ``mixval``                  1 forward pass per image
=========================  ==========================  ===============================================

:func:`score_candidates` builds the table (one row per candidate, plus ``inference_seconds`` and
``validator_seconds``), :func:`select` applies the default rule (rank average; keep the source model
unless a candidate ranks above it). :mod:`.candidates` reads candidates from disk (a benchmark folder, or a
list of checkpoints and the source model) and the ``target_training`` images; :mod:`.selection_report` writes
``selection.csv``, ``selection.png`` and a bundle of the chosen model (``monai-uda select``, docs/selection.md).

Plug-in point: :data:`VALIDATORS` is open. A method package registers its own validators with
:func:`register_validator` (e.g. the target-normalised W2 feature shift of BatchNorm re-estimation,
``monai_uda.methods.bn_reestimation.wasserstein``, which this package must not import); they are called as
``fn(candidate, **options)`` with a :class:`Candidate`.
"""

# importing each family registers its validators
from .agreement import consensus_score, foreground_dice, majority_vote, source_agreement_score
from .augmentation import Augmentation, default_augmentations, flip, intensity, rot90, tta_consistency_score
from .dropout_disagreement import dropout_layers, ensemble_disagreement_score, mc_dropout_score
from .entropy import entropy_score, information_maximization_score, pixel_entropy
from .label_statistics import (LabelStatistics, component_size_score, foreground_fraction_score,
                               source_label_statistics)
from .mixval import mixval_score
from .predictions import Candidate, Predictions, predict_probabilities
from .registry import VALIDATORS, get_validator, register_validator
from .score import score_candidates
from .selection import DEFAULT_RULE, select
from .candidates import CandidateSet, bench_candidates, checkpoint_candidates, source_statistics, target_images

__all__ = [
    "VALIDATORS", "register_validator", "get_validator",
    "Predictions", "Candidate", "predict_probabilities",
    "pixel_entropy", "entropy_score", "information_maximization_score",
    "foreground_dice", "majority_vote", "source_agreement_score", "consensus_score",
    "Augmentation", "flip", "rot90", "intensity", "default_augmentations", "tta_consistency_score",
    "dropout_layers", "mc_dropout_score", "ensemble_disagreement_score",
    "LabelStatistics", "source_label_statistics", "foreground_fraction_score", "component_size_score",
    "mixval_score",
    "score_candidates", "DEFAULT_RULE", "select",
    "CandidateSet", "bench_candidates", "checkpoint_candidates", "target_images", "source_statistics",
]
