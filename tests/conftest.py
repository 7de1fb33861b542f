"""Shared fixtures: the real SmolLM2 tokenizer (read once from the embedded GGUF) and tiny random
Llama models built on it, so unit tests exercise real chat templates in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(rel: str) -> Path:
    """A file of ../shared/data, or skip the test where that folder is absent."""
    path = SHARED_DATA / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The SmolLM2 tokenizer saved as a plain directory (fast to reload). ``$SAFEFT_TEST_TOKENIZER``, a
    folder holding that tokenizer, stands in on a machine without the embedded GGUF (the GPU check)."""
    from safeft.models import load_tokenizer, resolve_model

    given = os.environ.get("SAFEFT_TEST_TOKENIZER")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("tokenizer")
    load_tokenizer(resolve_model("smollm2-135m-instruct")).save_pretrained(out)
    return out


@pytest.fixture
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def make_tiny_model(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def perturb_attention(model, seed: int = 1, scale: float = 0.05):
    """A stand-in for alignment: q_proj/v_proj weights moved by seeded noise (in place; returns model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj.weight" in name or "v_proj.weight" in name:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def randomise_lora_b(model, seed: int = 3, scale: float = 0.1):
    """PEFT starts LoRA with B = 0 (dW = 0): give every lora_B seeded noise, in place; returns model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A saved tiny random Llama with the SmolLM2 tokenizer: a valid ``--model`` directory."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = tmp_path_factory.mktemp("tiny_model")
    model = make_tiny_model(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Caches tests write (self-distillation) go to a temporary folder, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SAFEFT_CACHE_DIR", str(tmp_path_factory.mktemp("safeft_cache")))
    yield
    mp.undo()


@pytest.fixture
def restore_environ():
    """TrainingArguments sets process environment variables for FSDP; put the environment back."""
    saved = dict(os.environ)
    yield
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)
