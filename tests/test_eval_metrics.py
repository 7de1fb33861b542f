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


def test_report_names_the_measure_and_reads_old_results():
    from safeft.eval.report import tables

    new = {
        "model": {"name": "m"},
        "config": {},
        "judge": {
            "name": "keyword",
            "measures": "non_refusal_rate",
            "agreement": {"accuracy": 0.689, "accuracy_ci95": [0.651, 0.725], "n": 595, "data": "hb"},
        },
        "attacks": {
            "direct": asr_summary(
                ["compliant", "refusal", "empty", "repetitive"], "keyword", "non_refusal_rate"
            )
        },
    }
    old = {  # a results.json written before `measures` existed: `asr` only
        "model": {"name": "m0"},
        "config": {},
        "judge": {"name": "keyword"},
        "attacks": {"direct": {"asr": 0.25, "ci95": [0.1, 0.5], "n": 8, "unjudged": 0}},
    }
    out = {title: (head, rows, note) for title, head, rows, note in tables([new, old], ["new", "old"])}
    head, rows, _ = out["Runs"]
    assert rows[0][head.index("measures")] == "non_refusal_rate"
    assert rows[0][head.index("judge agreement with people")].startswith(
        "agreement 68.9% [65.1%, 72.5%] (n=595"
    )
    assert rows[1][head.index("measures")] == "asr (not recorded)"
    assert rows[1][head.index("judge agreement with people")] == "agreement not measured"
    _, rows, note = out["Attack success rate (lower is safer)"]
    assert rows[0][1] == "50.0% [9.4%, 90.5%] (n=2), empty 1, repetitive 1 (worst case 75.0%)"
    assert rows[0][2] == "25.0% [10.0%, 50.0%] (n=8)"
    assert "new: non_refusal_rate by keyword" in note and "degenerate" in note
