import math

import pandas as pd
import pytest

from monai_uda.validators.selection import DEFAULT_RULE, rule_scores, select


def _scores(rows):
    return pd.DataFrame(rows, index=[r.pop("name") for r in rows]) if rows else pd.DataFrame()


def test_the_source_is_kept_when_every_candidate_scores_below_it():
    df = _scores([dict(name="source", im=0.5, mixval=0.9), dict(name="bn", im=0.4, mixval=0.8),
                  dict(name="st", im=0.3, mixval=0.85)])
    chosen, reason = select(df)
    assert chosen == "source" and reason.startswith("keep the source model") and "im, mixval" in reason


def test_a_candidate_above_the_source_on_the_rank_average_is_chosen():
    df = _scores([dict(name="source", im=0.5, mixval=0.7, foreground_fraction=-1.0, entropy=-0.01),
                  dict(name="bn", im=0.6, mixval=0.9, foreground_fraction=-0.2, entropy=-0.3),
                  dict(name="st", im=0.7, mixval=0.6, foreground_fraction=-2.0, entropy=0.0)])
    assert rule_scores(df).to_dict() == pytest.approx({"source": 5 / 3, "bn": 8 / 3, "st": 5 / 3})
    chosen, reason = select(df)
    assert chosen == "bn" and "'bn'" in reason and "entropy" not in reason  # entropy is not in the default rule
    assert select(df, rule="entropy")[0] == "st"
    assert select(df, rule=["im", "entropy"])[0] == "st"


def test_ties_and_missing_scores_go_against_the_candidate():
    # the copy comes first, so that a plain argmax would pick it
    df = _scores([dict(name="copy", im=0.5), dict(name="source", im=0.5), dict(name="broken", im=math.nan)])
    assert select(df)[0] == "source"
    assert rule_scores(df)["broken"] == 1.0  # a missing score ranks last


def test_without_a_source_row_the_best_is_chosen():
    df = _scores([dict(name="a", mixval=0.2), dict(name="b", mixval=0.4)])
    chosen, reason = select(df)
    assert chosen == "b" and "no 'source' row" in reason


def test_bad_rules_are_named():
    df = _scores([dict(name="source", entropy=0.1), dict(name="a", entropy=0.2)])
    with pytest.raises(ValueError, match="rule 'default' needs one of the columns " + ", ".join(DEFAULT_RULE)):
        select(df)
    with pytest.raises(ValueError, match=r"rule 'w2': no column \['w2'\]; the scores have entropy"):
        select(df, rule="w2")
    with pytest.raises(ValueError, match="no candidates"):
        select(_scores([]))


def test_a_tie_for_the_best_score_is_broken_by_name_not_by_row_order():
    import pandas as pd

    from monai_uda.validators import select

    df = pd.DataFrame({"im": [0.1, 0.2, 0.4, 0.3], "mixval": [0.1, 0.2, 0.3, 0.4],
                       "foreground_fraction": [0.0, 0.1, 0.2, 0.2], "component_sizes": [0.0, 0.1, 0.2, 0.2]},
                      index=["source", "bn", "st", "early"])  # st and early tie for the best mean rank
    assert select(df)[0] == "early"
    assert select(df.iloc[::-1])[0] == "early"
