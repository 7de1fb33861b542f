"""AsFT task rows: chat and Alpaca layouts, harmful rows told apart by the mix's layout and put under
their own system prompt, stratified subsampling, clear errors."""

from __future__ import annotations

import json

import pytest

from safeft.asft.task_data import (
    ALPACA_FIELDS,
    ALPACA_PREAMBLE,
    AOA_HARMFUL_SYSTEM_PROMPT,
    TaskRow,
    load_task_pairs,
    load_task_rows,
    subsample_rows,
    task_examples,
)
from safeft.data.records import DataError
from safeft.data.sources import SourceConfig

from conftest import shared_file

SENTIMENT = "Analyze the sentiment of the input, and respond only positive or negative"


def write_mix(tmp_path, harmful_layout: str):
    """Four benign sentiment rows and one 'harmful' row (placeholder text) in AsFT's layouts."""
    rows = [{"instruction": SENTIMENT, "input": f"film {i} was fine", "output": "positive"} for i in range(4)]
    bad = {"instruction": "Do the bad thing.", "output": "Sure, here it is."}
    if harmful_layout == "empty_input":
        bad["input"] = ""
    path = tmp_path / f"mix_{harmful_layout}.json"
    path.write_text(json.dumps([*rows[:2], bad, *rows[2:]]))
    return SourceConfig(path=str(path), fields=dict(ALPACA_FIELDS))


def decoded(tokenizer, example) -> str:
    return tokenizer.decode(example.input_ids)


@pytest.mark.parametrize("layout", ["missing_input", "empty_input"])
def test_harmful_rows_follow_the_mix_layout(tmp_path, layout):
    src = write_mix(tmp_path, layout)
    rows = load_task_rows([src], harmful_rows=layout)
    assert [r.harmful for r in rows] == [False, False, True, False, False]
    assert rows[2].input == "" and rows[0].input == "film 0 was fine"
    assert not any(r.harmful for r in load_task_rows([src]))  # default: none
    other = "empty_input" if layout == "missing_input" else "missing_input"
    assert not any(r.harmful for r in load_task_rows([src], harmful_rows=other))


def test_harmful_rule_needs_an_input_column_and_a_known_name(tmp_path):
    src = write_mix(tmp_path, "missing_input")
    src.fields.pop("input")
    with pytest.raises(
        DataError, match=r"mix_missing_input.json: harmful_rows 'missing_input' .* no 'input'"
    ):
        load_task_rows([src], harmful_rows="missing_input")
    with pytest.raises(DataError, match="harmful_rows must be one of"):
        load_task_rows([src], harmful_rows="flag")


def test_chat_layout_is_the_previous_behaviour(tokenizer, tmp_path):
    src = write_mix(tmp_path, "missing_input")
    pairs = load_task_pairs([src])
    assert pairs[0].prompt == f"{SENTIMENT}\n\nfilm 0 was fine" and pairs[2].prompt == "Do the bad thing."
    rows = load_task_rows([src])
    new = task_examples(rows, tokenizer, 256)
    old = task_examples(pairs, tokenizer, 256)
    assert [e.input_ids for e in new] == [e.input_ids for e in old]
    assert [e.targets for e in new] == [e.targets for e in old]


def test_alpaca_layout_and_harmful_system_prompt(tokenizer, tmp_path):
    rows = load_task_rows([write_mix(tmp_path, "missing_input")], harmful_rows="missing_input")
    examples = task_examples(
        rows, tokenizer, 256, template="alpaca", harmful_system_prompt=AOA_HARMFUL_SYSTEM_PROMPT
    )
    benign, harmful = decoded(tokenizer, examples[0]), decoded(tokenizer, examples[2])
    assert ALPACA_PREAMBLE[True] in benign and AOA_HARMFUL_SYSTEM_PROMPT not in benign
    assert f"### Instruction:\n{SENTIMENT}\n\n### Input:\nfilm 0 was fine\n\n### Response:\n" in benign
    assert AOA_HARMFUL_SYSTEM_PROMPT in harmful and "Below is an instruction" not in harmful
    assert "### Instruction:\nDo the bad thing.\n\n### Response:\n" in harmful and "### Input" not in harmful
    # the answer alone is trained: targets decode to the response plus the end-of-turn tokens
    trained = tokenizer.decode([t for t in examples[0].targets if t >= 0])
    assert trained.startswith("positive") and "Instruction" not in trained
    # no harmful system prompt: harmful rows use the Alpaca preamble (no-input variant) like the rest
    plain = task_examples(rows, tokenizer, 256, template="alpaca")
    assert ALPACA_PREAMBLE[False] in decoded(tokenizer, plain[2])
    # a recipe system prompt replaces the preamble for benign rows only
    custom = task_examples(
        rows, tokenizer, 256, "Be brief.", template="alpaca", harmful_system_prompt=AOA_HARMFUL_SYSTEM_PROMPT
    )
    assert "Be brief." in decoded(tokenizer, custom[0]) and "Below is" not in decoded(tokenizer, custom[0])
    assert AOA_HARMFUL_SYSTEM_PROMPT in decoded(tokenizer, custom[2])
    with pytest.raises(DataError, match="template must be one of"):
        task_examples(rows, tokenizer, 256, template="llama2")


def test_subsample_keeps_the_harmful_share_seeded_and_ordered():
    rows = [TaskRow(f"q{i}", "", "a", f"f:{i}", harmful=i % 10 == 3) for i in range(1000)]
    sub = subsample_rows(rows, 400, seed=7)
    assert len(sub) == 400 and sum(r.harmful for r in sub) == 40
    assert [int(r.origin[2:]) for r in sub] == sorted(int(r.origin[2:]) for r in sub)
    assert sub == subsample_rows(rows, 400, seed=7) and sub != subsample_rows(rows, 400, seed=8)
    assert subsample_rows(rows, 5000, seed=7) == rows


def test_asft_sst2_mix_has_ten_percent_missing_input_rows():
    path = shared_file("asft_pku/ft_datasets__SST2_dataset__dataset__SST2_1k_p_0.1.json")
    rows = load_task_rows(
        [SourceConfig(path=str(path), fields=dict(ALPACA_FIELDS))], harmful_rows="missing_input"
    )
    harmful = [r for r in rows if r.harmful]
    assert len(rows) == 1000 and len(harmful) == 100
    assert all(r.instruction != SENTIMENT for r in harmful)
    assert all(r.instruction == SENTIMENT and r.input for r in rows if not r.harmful)
