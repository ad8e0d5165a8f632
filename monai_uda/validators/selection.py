"""Pick one candidate from the validator scores, or keep the source model.

No single validator is reliable across methods and shifts (Hu et al., NeurIPS 2024, "Towards Reliable
Model Selection for Unsupervised Domain Adaptation"), so the default rule combines several by rank:

1. each column of :data:`DEFAULT_RULE` present in the scores ranks the candidates (higher score = higher
   rank, ties share the mean rank, a missing score ranks last);
2. a candidate's rule score is its mean rank over those columns;
3. the best rule score wins, **unless it is not strictly above the source model's**: then the source model
   is kept (an adaptation must earn its place; ties go to the source).

``DEFAULT_RULE`` = ``im`` (confident and diverse), ``mixval`` (the probe), ``foreground_fraction`` and
``component_sizes`` (the source-label prior; present only when ``source_statistics`` was given). It leaves
out ``source_agreement`` (the source model scores 1 on it by construction) and ``entropy`` (rewards the
all-background collapse that ``im`` punishes). It is a heuristic: which rule tracks target Dice best is
what the benchmark's validator study measures.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

__all__ = ["DEFAULT_RULE", "rule_scores", "select"]

DEFAULT_RULE = ("im", "mixval", "foreground_fraction", "component_sizes")


def _columns(df: pd.DataFrame, rule: str | Sequence[str]) -> list[str]:
    if rule == "default":
        columns = [c for c in DEFAULT_RULE if c in df.columns]
        if not columns:
            raise ValueError(f"rule 'default' needs one of the columns {', '.join(DEFAULT_RULE)}; "
                             f"the scores have {', '.join(map(str, df.columns))}")
        return columns
    columns = [rule] if isinstance(rule, str) else list(rule)
    missing = [c for c in columns if c not in df.columns]
    if not columns or missing:
        raise ValueError(f"rule {rule!r}: no column {missing or columns}; "
                         f"the scores have {', '.join(map(str, df.columns))}")
    return columns


def rule_scores(df: pd.DataFrame, rule: str | Sequence[str] = "default") -> pd.Series:
    """Each candidate's mean rank (1 = worst) over the rule's columns."""
    columns = _columns(df, rule)
    return df[columns].rank(ascending=True, method="average", na_option="top").mean(axis=1)


def select(df: pd.DataFrame, rule: str | Sequence[str] = "default", source_name: str = "source") -> tuple[str, str]:
    """The chosen candidate and a one-line reason.

    Args:
        df: :func:`~monai_uda.validators.score.score_candidates`'s table (candidates as the index).
        rule: ``"default"`` (rank average of :data:`DEFAULT_RULE`), one column name, or a list of columns.
        source_name: the source model's row; kept unless a candidate's rule score is strictly higher.
            Without that row, the best candidate is chosen. Candidates tied for the best score are taken in
            alphabetical order of their names, so the pick does not depend on the order of the table's rows.
    """
    if df.empty:
        raise ValueError("select df: no candidates")
    scores = rule_scores(df, rule)
    columns = ", ".join(_columns(df, rule))
    best = min(str(c) for c in scores.index[scores == scores.max()])
    if source_name not in scores.index:
        return best, f"{best!r} has the best mean rank {scores[best]:.2f} over {columns} (no {source_name!r} row)"
    if best == source_name or scores[best] <= scores[source_name]:
        others = scores.drop(source_name)
        runner = f"; best other {others.idxmax()!r} {others.max():.2f}" if len(others) else ""
        return source_name, (f"keep the source model: no candidate ranks above it over {columns} "
                             f"(source {scores[source_name]:.2f}{runner})")
    return best, (f"{best!r} has the best mean rank {scores[best]:.2f} over {columns}, "
                  f"above the source model's {scores[source_name]:.2f}")
