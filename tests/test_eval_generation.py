"""HFGenerator: batched == one-at-a-time, prefill handling, order, PEFT models."""

from __future__ import annotations

import pytest
import torch

from safeft.eval.generation import (
    Conversation,
    GenerationConfig,
    HFGenerator,
    cut_at_stop,
    length_sorted_batches,
    render_prompt,
)

from conftest import make_tiny_model

PROMPTS = [
    "Hi",
    "Write a short poem about the sea and the sky at night.",
    "What is 2 + 2?",
    "List three colours.",
    "Explain photosynthesis to a child in two sentences, please, using simple words.",
]


@pytest.fixture(scope="module")
def tiny(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = make_tiny_model(len(tok), seed=1)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def test_batched_equals_one_at_a_time_and_keeps_order(tiny):
    model, tok = tiny
    convs = [Conversation.user(p) for p in PROMPTS]
    convs[2].prefill = "Sure, the answer"
    batched = HFGenerator(model, tok, GenerationConfig(max_new_tokens=12, batch_size=3)).generate(convs)
    single_gen = HFGenerator(model, tok, GenerationConfig(max_new_tokens=12, batch_size=1))
    single = [single_gen.generate([c])[0] for c in convs]
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)
    # distinct prompts give distinct random continuations, so a permuted order would show
    assert len(set(batched)) > 1


def test_output_excludes_prompt_and_prefill(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok, GenerationConfig(max_new_tokens=6, batch_size=4))
    conv = Conversation.user("Hello there", prefill="PREFILLED-START")
    prompt_ids = gen.encode([conv])[0]
    with torch.inference_mode():
        full = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    expected = tok.decode(full[0, len(prompt_ids) :], skip_special_tokens=True)
    (text,) = gen.generate([conv])
    assert text == expected
    assert "PREFILLED-START" not in text
    assert render_prompt(tok, conv).endswith("<|im_start|>assistant\nPREFILLED-START")


def test_on_batch_callback_sees_every_index_once(tiny):
    model, tok = tiny
    seen: list[int] = []
    gen = HFGenerator(model, tok, GenerationConfig(max_new_tokens=2, batch_size=2))
    out = gen.generate([Conversation.user(p) for p in PROMPTS], on_batch=lambda idx, _t: seen.extend(idx))
    assert sorted(seen) == list(range(len(PROMPTS)))
    assert len(out) == len(PROMPTS)


def test_peft_wrapped_model_generates_same_as_base_at_init(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    base_out = HFGenerator(model, tok, GenerationConfig(max_new_tokens=5)).generate(
        [Conversation.user(p) for p in PROMPTS[:2]]
    )
    peft_model = get_peft_model(
        make_tiny_model(len(tok), seed=1), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    peft_model.base_model.model.config.pad_token_id = tok.pad_token_id
    out = HFGenerator(peft_model, tok, GenerationConfig(max_new_tokens=5)).generate(
        [Conversation.user(p) for p in PROMPTS[:2]]
    )
    assert out == base_out  # LoRA B starts at zero: the adapter is a no-op until trained


def test_length_sorted_batches_and_stop_strings():
    assert length_sorted_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    assert cut_at_stop("abc###def###", ["###", "zz"]) == "abc"
    assert GenerationConfig(batch_size=1).cache_key() == GenerationConfig(batch_size=64).cache_key()
    assert GenerationConfig(max_new_tokens=5).cache_key() != GenerationConfig().cache_key()
