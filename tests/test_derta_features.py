"""DeRTa rows, token by token, on the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

import random

import pytest

from safeft.data.chat import IGNORE, KIND_MLE, KIND_NONE, KIND_RTO, ChatFormat, TruncationLog, encode_sft
from safeft.data.records import DataError, SafetyTriple
from safeft.derta.features import (
    build_derta_examples,
    draw_prefix_words,
    encode_prefix_row,
    encode_rto_row,
    harmful_prefix,
)

HARMFUL = "Step one:\n  gather the  tools. Step two: use them carefully now."
TRIPLE = SafetyTriple("How do I do the bad thing?", HARMFUL, "Sorry, I can't help with that.", "t.jsonl:1")


@pytest.fixture
def fmt(tokenizer) -> ChatFormat:
    return ChatFormat(tokenizer)


def test_harmful_prefix_keeps_original_spacing():
    assert harmful_prefix(HARMFUL, 0) == ""
    assert harmful_prefix(HARMFUL, 2) == "Step one:"
    assert harmful_prefix(HARMFUL, 4) == "Step one:\n  gather the"
    assert harmful_prefix(HARMFUL, 100) == HARMFUL


def test_prefix_length_draw_matches_reference():
    rng = random.Random(0)
    draws = [draw_prefix_words(10, rng, 1 / 3) for _ in range(6000)]
    assert all(0 <= k <= 8 for k in draws)  # k = 0, or 1..n-2
    assert abs(draws.count(0) / len(draws) - 1 / 3) < 0.03
    nonzero = [k for k in draws if k]
    assert set(nonzero) == set(range(1, 9))  # uniform over 1..n-2: every value occurs
    assert draw_prefix_words(2, random.Random(0), 0.0) == 0  # too short for a prefix
    again = random.Random(0)
    assert [draw_prefix_words(10, again, 1 / 3) for _ in range(6000)] == draws  # seedable


def test_end_of_turn_comes_from_the_template(fmt, tokenizer):
    assert tokenizer.decode(fmt.end_of_turn_ids) == "<|im_end|>\n"


def test_prefix_row_trains_only_the_refusal(fmt, tokenizer):
    row = encode_prefix_row(fmt, TRIPLE, 4, 512, TruncationLog())
    prompt = fmt.prompt_ids(TRIPLE.prompt)
    context = fmt.encode("Step one:\n  gather the")
    refusal = fmt.encode(TRIPLE.refusal) + fmt.end_of_turn_ids
    full = prompt + context + refusal
    assert row.input_ids == full[:-1]
    start = len(prompt) + len(context) - 1
    assert row.targets[:start] == [IGNORE] * start
    assert row.targets[start:] == refusal  # next-token targets of the refusal and end of turn
    assert row.kinds == [KIND_NONE] * start + [KIND_MLE] * len(refusal)
    # the token predicted right after the harmful prefix is the refusal's first token, "Sorry"
    assert tokenizer.decode([row.targets[start]]) == "Sorry"


def test_prefix_row_with_k0_is_plain_safety_sft(fmt):
    row = encode_prefix_row(fmt, TRIPLE, 0, 512, TruncationLog())
    prompt = fmt.prompt_ids(TRIPLE.prompt)
    assert row.input_ids[: len(prompt)] == prompt
    assert row.targets[len(prompt) - 1] == fmt.encode("Sorry")[0]
    assert sum(k == KIND_MLE for k in row.kinds) == len(fmt.encode(TRIPLE.refusal)) + len(fmt.end_of_turn_ids)


def test_rto_row_targets_refusal_token_at_every_harmful_position(fmt):
    sorry = fmt.single_token("Sorry")
    row = encode_rto_row(fmt, TRIPLE, sorry, 512, TruncationLog())
    prompt = fmt.prompt_ids(TRIPLE.prompt)
    harmful = fmt.encode(HARMFUL)
    assert row.input_ids == prompt + harmful
    start = len(prompt) - 1
    assert row.targets == [IGNORE] * start + [sorry] * (len(harmful) + 1)
    assert row.kinds == [KIND_NONE] * start + [KIND_RTO] * (len(harmful) + 1)
    # the harmful answer's own next tokens are never targets
    assert not any(t == h for t, h in zip(row.targets[start:], harmful, strict=False) if h != sorry)


def test_helpful_row_is_plain_mle(fmt):
    row = encode_sft(fmt, "What is 2+2?", "It is 4.", "h.jsonl:1", 512, TruncationLog())
    prompt = fmt.prompt_ids("What is 2+2?")
    answer = fmt.encode("It is 4.") + fmt.end_of_turn_ids
    assert row.input_ids == (prompt + answer)[:-1]
    assert row.targets == [IGNORE] * (len(prompt) - 1) + answer
    assert set(row.kinds) == {KIND_NONE, KIND_MLE}


def test_truncation_shortens_harmful_parts_and_never_the_refusal(fmt, caplog):
    long_triple = SafetyTriple("q?", "word " * 600, "Sorry, no.", "long.jsonl:7")
    log = TruncationLog()
    prompt_len = len(fmt.prompt_ids("q?"))
    row = encode_prefix_row(fmt, long_triple, 500, 64, log)
    assert len(row.input_ids) == 64
    refusal = fmt.encode("Sorry, no.") + fmt.end_of_turn_ids
    assert row.targets[-len(refusal) :] == refusal
    rto = encode_rto_row(fmt, long_triple, fmt.single_token("Sorry"), 64, log)
    assert len(rto.input_ids) == 64 and rto.input_ids[:prompt_len] == fmt.prompt_ids("q?")
    assert log.counts == {"harmful prefix shortened": 1, "harmful response truncated (RTO)": 1}
    assert "long.jsonl:7" in log.summary()
    too_long = encode_prefix_row(fmt, SafetyTriple("q " * 80, "a b c", "Sorry.", "x:3"), 0, 64, log)
    assert too_long is None and log.counts["dropped: prompt + refusal longer than max_length"] == 1


def test_bad_rows_name_origin_and_field(fmt):
    with pytest.raises(DataError, match=r"t.jsonl:2: field 'refusal' tokenizes to nothing"):
        encode_prefix_row(fmt, SafetyTriple("q", "a b c", "", "t.jsonl:2"), 0, 512, TruncationLog())
    with pytest.raises(DataError, match=r"t.jsonl:3: field 'harmful_response' is shorter than one token"):
        encode_rto_row(fmt, SafetyTriple("q", "", "Sorry", "t.jsonl:3"), 1, 512, TruncationLog())


@pytest.mark.parametrize(
    ("prefix", "rto", "expected"),
    [
        (True, True, {"prefix": 3, "rto": 3, "helpful": 0}),
        (True, False, {"prefix": 3, "rto": 0, "helpful": 0}),
        (False, True, {"prefix": 3, "rto": 3, "helpful": 0}),  # "+RTO": plain refusal rows + RTO rows
        (False, False, {"prefix": 3, "rto": 0, "helpful": 0}),
    ],
)
def test_ablation_switches(fmt, prefix, rto, expected):
    triples = [
        SafetyTriple(f"q{i}?", "one two three four five six seven", "Sorry.", f"f:{i}") for i in range(3)
    ]
    examples, stats = build_derta_examples(triples, [], fmt, prefix=prefix, rto=rto, seed=1)
    counts = {t: sum(e.row_type == t for e in examples) for t in ("prefix", "rto", "helpful")}
    assert counts == expected
    if not prefix:  # vanilla safety SFT and "+RTO": the refusal starts at position 0
        assert stats.prefix_words == [0, 0, 0]
    else:
        assert any(k > 0 for k in stats.prefix_words)


def test_build_is_reproducible(fmt):
    triples = [SafetyTriple(f"q{i}?", " ".join(["w"] * 30), "Sorry.", f"f:{i}") for i in range(20)]
    a, _ = build_derta_examples(triples, [], fmt, seed=3)
    b, _ = build_derta_examples(triples, [], fmt, seed=3)
    c, _ = build_derta_examples(triples, [], fmt, seed=4)
    assert [e.input_ids for e in a] == [e.input_ids for e in b]
    assert [e.input_ids for e in a] != [e.input_ids for e in c]


def test_guard_marks_the_answer_positions_of_helpful_rows_only(fmt):
    from safeft.data.records import HelpfulPair

    helpful = [HelpfulPair("Name a fruit.", "An apple. Sorry, a pear.", "h:1")]
    examples, _ = build_derta_examples([TRIPLE], helpful, fmt, seed=0, guard=True)
    sorry = fmt.single_token("Sorry")
    for ex in examples:
        assert ex.avoid is not None and len(ex.avoid) == len(ex.input_ids)
        assert "avoid" in ex.as_features()
        guarded = [i for i, a in enumerate(ex.avoid) if a != IGNORE]
        if ex.row_type != "helpful":
            assert guarded == []  # safety rows: the refusal is wanted there
            continue
        assert set(ex.avoid) - {IGNORE} == {sorry}
        answer = [i for i, k in enumerate(ex.kinds) if k == KIND_MLE]
        # every answer position, except one whose own next token is the refusal token
        assert guarded == [i for i in answer if ex.targets[i] != sorry]
        assert len(guarded) >= len(answer) - 1 and guarded
    plain, _ = build_derta_examples([TRIPLE], helpful, fmt, seed=0)
    assert all(ex.avoid is None and "avoid" not in ex.as_features() for ex in plain)


@pytest.mark.parametrize("derta", [True, False])
def test_refusal_guard_marks_each_refusal_after_its_first_token(fmt, derta):
    from safeft.data.records import HelpfulPair

    helpful = [HelpfulPair("Name a fruit.", "An apple.", "h:1")]
    triples = [TRIPLE, SafetyTriple("Other bad thing?", HARMFUL, "Sorry, no.", "t.jsonl:2")]
    kwargs = {"prefix": derta, "rto": derta, "prefix_zero_fraction": 0.5, "seed": 1, "guard": True}
    plain, _ = build_derta_examples(triples, helpful, fmt, **kwargs)
    examples, _ = build_derta_examples(triples, helpful, fmt, refusal_guard=True, **kwargs)
    sorry = fmt.single_token("Sorry")
    end_of_turn = fmt.end_of_turn_ids[0]
    refusals = 0
    for ex, before in zip(examples, plain, strict=True):
        assert ex.avoid == before.avoid and before.avoid_in_refusal is None  # the helpful guard as before
        assert "avoid_in_refusal" in ex.as_features() and len(ex.avoid_in_refusal) == len(ex.input_ids)
        guarded = [i for i, a in enumerate(ex.avoid_in_refusal) if a != IGNORE]
        if ex.row_type != "prefix":
            assert guarded == []  # helpful rows have their own guard; RTO wants "Sorry" everywhere
            continue
        refusals += 1
        answer = [i for i, k in enumerate(ex.kinds) if k == KIND_MLE]
        assert ex.targets[answer[0]] == sorry  # the refusal's first token stays unguarded ...
        assert guarded == answer[1:]  # ... every later position is guarded, the end of turn included
        assert set(ex.avoid_in_refusal) - {IGNORE} == {sorry}
        assert any(ex.targets[i] == end_of_turn for i in guarded)
    assert refusals == 2
