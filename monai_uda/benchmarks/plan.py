"""The protocol-v2 benchmark plan: which methods run on which real pair, and in which stages.

One source of truth for ``scripts/full_benchmarks.sh`` (which runs :func:`schedule` stage by stage) and for the
cost table of ``scripts/protocol_tables.py`` (which sums :func:`plan` per pair). Methods come in families; a pair
runs the families that apply to it (the pixel-alignment family needs an intensity shift between modalities or
stains: C1 and D1; shallow-to-deep is 2D microscopy: A1, B2 and C1). Stage ``k`` runs each pair's first ``k``
families, pairs in turn (so D1's third family, pixel alignment, runs at stage 3, before C1's fourth); each stage
resumes the previous one, so every stage adds only its new methods. The last stage adds :data:`LAST` per pair:
``mcdropout``, then ``selected``, which picks among the seed's models and so must run after all of them.

    python -m monai_uda.benchmarks.plan          # one line per stage: PAIR METHOD,METHOD,...
"""

from __future__ import annotations

__all__ = ["FAMILIES", "LAST", "PAIR_FAMILIES", "plan", "schedule"]

#: method families, in the order the stages add them
FAMILIES: dict[str, list[str]] = {
    "baselines": ["source", "oracle", "bn_source", "bn", "bn_reset"],
    "self_training": ["buda", "selftrain", "st", "cbst", "early"],
    "shallow2deep": ["rf", "enhancer", "s2d", "s2d_noteacher", "s2d_norect"],
    "pixel_alignment": ["past", "fda", "histmatch"],
}

#: run after every family of a pair (``selected`` last: it chooses among the seed's finished models)
LAST: list[str] = ["mcdropout", "selected"]

#: the families each real pair runs
PAIR_FAMILIES: dict[str, list[str]] = {
    "A1": ["baselines", "self_training", "shallow2deep"],
    "B2": ["baselines", "self_training", "shallow2deep"],
    "C1": ["baselines", "self_training", "shallow2deep", "pixel_alignment"],
    "D1": ["baselines", "self_training", "pixel_alignment"],
}


def plan(pair: str) -> list[str]:
    """Every method the full benchmark runs on ``pair``, in running order (``selected`` last)."""
    if pair not in PAIR_FAMILIES:
        raise KeyError(f"no benchmark plan for pair {pair!r} (known: {', '.join(PAIR_FAMILIES)})")
    return [m for f in PAIR_FAMILIES[pair] for m in FAMILIES[f]] + LAST


def schedule() -> list[tuple[str, list[str]]]:
    """``(pair, methods)`` per stage: stage ``k`` runs each pair's first ``k`` families (pairs in turn), then each
    pair's whole :func:`plan`. Each stage's methods include the previous stage's (``--resume`` skips them)."""
    stages: list[tuple[str, list[str]]] = []
    for k in range(1, max(len(f) for f in PAIR_FAMILIES.values()) + 1):
        for pair, families in PAIR_FAMILIES.items():
            if k <= len(families):
                stages.append((pair, [m for f in families[:k] for m in FAMILIES[f]]))
    stages += [(pair, plan(pair)) for pair in PAIR_FAMILIES]
    return stages


if __name__ == "__main__":
    for pair, methods in schedule():
        print(pair, ",".join(methods))
