"""``selected`` in ``monai-uda benchmark``: the model a user without target labels would keep.

Per seed, after the other methods of the run (list ``selected`` last in ``--methods``), every model of that
seed's folder that is a label-free candidate (:func:`monai_uda.validators.candidates.seed_candidates`: the
source model and each adapted ``UDAUNet`` checkpoint; the oracle, ``rf`` and ``enhancer`` are not candidates) is
scored by the default validators on the pair's ``target_training`` images, with the source labels'
statistics as the prior (:func:`monai_uda.validators.score_candidates`), and the default rule
(:func:`monai_uda.validators.select`) picks one, or keeps the source model. The row is that checkpoint,
evaluated like every other row; it records which method was picked (``selected_method``) and why. No target
label is read before the evaluation.

The candidates' scores are written to ``<seed>/selected/selection.csv``.
"""

from __future__ import annotations

import os

from .methods import MethodContext, MethodOutput, load_methods, register_method

__all__ = ["selected"]

#: target_training images the validators read per seed (all of them when None)
IMAGE_LIMIT = 16


@register_method("selected", "the model the label-free default rule picks among this seed's source and adapted "
                             "models (monai_uda.validators; run it last)")
def selected(ctx: MethodContext) -> MethodOutput:
    from monai_uda.networks import UDAUNet
    from monai_uda.utils import atomic_json, atomic_write_text
    from monai_uda.validators import score_candidates, select
    from monai_uda.validators.candidates import (SOURCE, default_inferer, load_weights, seed_candidates,
                                                 source_statistics, target_images)

    uda = ctx.uda
    known = set(load_methods())
    names = sorted(m for m in os.listdir(ctx.workdir)
                   if m in known and m not in (SOURCE, "selected") and os.path.isdir(os.path.join(ctx.workdir, m)))

    def network():
        return UDAUNet(spatial_dims=uda.spatial_dims, in_channels=uda.in_channels, out_channels=uda.num_classes)

    found = seed_candidates(ctx.workdir, names, network)
    source = ctx.source_checkpoint()  # this seed's source model (trained here, resumed, or --source-from)
    found.networks = {SOURCE: load_weights(network(), source), **found.networks}
    found.checkpoints = {SOURCE: source, **found.checkpoints}
    limit = ctx.overrides.get("image_limit", IMAGE_LIMIT)
    scores = score_candidates(found.networks, target_images(uda, limit=limit), source_name=SOURCE,
                              inferer=default_inferer(uda.spatial_dims), device=ctx.device, progress=False,
                              source_statistics=source_statistics(uda))
    name, reason = select(scores, source_name=SOURCE)
    out = os.path.join(ctx.workdir, "selected")
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "selection.csv"), scores.to_csv(index_label="candidate"))
    atomic_json({"selected": name, "reason": reason, "checkpoint": found.checkpoints[name],
                 "skipped": found.skipped}, os.path.join(out, "selection.json"))
    return MethodOutput(checkpoint=found.checkpoints[name], extra={
        "selected_method": name, "selection_candidates": len(found.networks),
        "selection_reason": reason, "validator_seconds": round(float(scores["validator_seconds"].sum()), 1)})
