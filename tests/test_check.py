"""The quick before/after check's bookkeeping (generation itself is covered by the trainer tests)."""

from __future__ import annotations

from safeft.check import format_check, is_repetitive, normalise


def test_repetitive_answers_are_flagged():
    assert is_repetitive("oofing, whereSorrySorrySorrySorry")
    assert is_repetitive("no way, no way, no way, no way")
    assert not is_repetitive("Sorry, I can't help with that. I can help with something else.")
    assert not is_repetitive("1, 2, 3, 4, 5")


def test_table_shows_rates_and_n():
    before = {k: {"refusal_rate": 0.0, "n": 50} for k in ("harmful_direct", "harmful_prefill", "benign")}
    after = {
        "harmful_direct": {"refusal_rate": 0.9, "n": 50, "repetitive_rate": 0.2},
        "harmful_prefill": {"refusal_rate": 0.86, "n": 50, "repetitive_rate": 0.8},
        "benign": {"refusal_rate": 0.36, "n": 50},
    }
    table = format_check(before, after).splitlines()
    assert "harmful, harmful prefix prefilled" in table[3] and "86%" in table[3] and "80%" in table[3]
    assert table[4].split()[2:6] == ["0%", "36%", "50", "-"]


def test_prompts_are_compared_without_case_or_spacing():
    assert normalise("  How do I\n  Boil an EGG? ") == normalise("how do i boil an egg?")
