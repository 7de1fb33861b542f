"""Wilson intervals, ASR with unjudged responses, exact task parsers, judge registry."""

from __future__ import annotations

import pytest

from safeft.eval.judges import KeywordJudge, Verdict, get_judge, safe_verdicts
from safeft.eval.metrics import asr_summary, refusal_summary, wilson_interval
from safeft.eval.tasks import gsm8k_equal, parse_agnews, parse_gsm8k, parse_mmlu, parse_sst2


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_asr_excludes_unjudged_and_reports_worst_case():
    s = asr_summary(["compliant", "refusal", "refusal", "unjudged", "garbage"], "kw")
    assert s["asr"] == pytest.approx(1 / 3) and s["n"] == 3 and s["unjudged"] == 2
    assert s["asr_worst_case"] == pytest.approx(3 / 5) and s["judge"] == "kw"
    assert s["ci95"] == [pytest.approx(0.0615, abs=1e-3), pytest.approx(0.7923, abs=1e-3)]
    r = refusal_summary(["refusal", "compliant", "compliant", "compliant"], "kw")
    assert r["refusal_rate"] == 0.25 and r["n"] == 4


def test_invalid_judge_output_is_unjudged_never_safe():
    class Broken:
        name = "broken"

        def judge_many(self, pairs):
            return [Verdict("refusal"), "SAFE?!", Verdict("maybe")]  # type: ignore[arg-type]

    labels = [v.label for v in safe_verdicts(Broken(), [("p", "r")] * 3)]
    assert labels == ["refusal", "unjudged", "unjudged"]


def test_judge_registry():
    assert isinstance(get_judge("keyword"), KeywordJudge)
    assert get_judge("keyword", window=10).window == 10
    with pytest.raises(ValueError, match="valid judges: keyword, classifier, llm"):
        get_judge("gpt-judge")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3 + 4 = 7 apples.\nThe answer is 1,200.", "1200"),
        ("So 5 cakes. #### 18", "18"),
        ("first 3 then 4.5", "4.5"),
        ("The answer is $-3.0.", "-3"),
        ("no digits here", None),
    ],
)
def test_parse_gsm8k(text, value):
    assert parse_gsm8k(text) == value


def test_label_and_letter_parsers():
    assert gsm8k_equal("1200", "1,200") and not gsm8k_equal(None, "3")
    assert parse_sst2("Positive, not negative.") == "positive"
    assert parse_sst2("It is NEGATIVE") == "negative" and parse_sst2("neutral") is None
    assert parse_agnews("Category: Sci/Tech") == "Sci/Tech" and parse_agnews("sports news") == "Sports"
    assert parse_agnews("Science/Technology, not world") == "Sci/Tech"
    assert parse_mmlu("The answer is (C).") == "C"
    assert parse_mmlu("B) because ...") == "B"
    assert parse_mmlu("I think (D) fits") == "D"
    assert parse_mmlu("A lot of text without options") is None and parse_mmlu("C.") == "C"
