"""``safeft eval --backend vllm`` against a stand-in ``vllm`` module that records what it is asked (vLLM
itself needs a CUDA GPU and is not installed here): the arguments safeft passes to ``vllm.LLM``,
``SamplingParams`` and ``LoRARequest``, prompts rendered with the chat template and the prefill, chunks
handed to the cache, the backend in the fingerprint, and the errors."""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing

import pytest

from safeft.eval.generation import Conversation, GenerationConfig, render_prompt


class FakeLLM:
    """Records its construction and every generate call; answers "reply <n>###tail"."""

    instances: typing.ClassVar[list[FakeLLM]] = []

    def __init__(self, **kwargs) -> None:
        from transformers import AutoTokenizer

        self.kwargs = kwargs
        self.calls: list[dict] = []
        self._tokenizer = AutoTokenizer.from_pretrained(kwargs["model"])
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return self._tokenizer

    def generate(self, prompts, sampling, lora_request=None, use_tqdm=True):
        self.calls.append({"prompts": list(prompts), "sampling": sampling, "lora": lora_request})
        done = sum(len(c["prompts"]) for c in self.calls[:-1])
        texts = [f"reply {done + i}###tail" for i in range(len(prompts))]
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=t)]) for t in texts]


class FakeSamplingParams:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


class FakeLoRARequest:
    def __init__(self, name: str, lora_id: int, path: str) -> None:
        self.name, self.lora_id, self.path = name, lora_id, path


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    for name, module in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    FakeLLM.instances = []
    return FakeLLM


def eval_args(*argv: str) -> argparse.Namespace:
    from safeft.commands import eval as eval_command

    parser = argparse.ArgumentParser()
    eval_command.register(parser.add_subparsers())
    return parser.parse_args(["eval", *argv])


def test_eval_backend_vllm_generates_through_vllm_llm(tmp_path, tiny_model_dir, fake_vllm):
    from safeft.commands.eval import execute

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"How do I boil {i} eggs?"}) + "\n" for i in range(3)))
    out = tmp_path / "eval"
    args = eval_args("--model", str(tiny_model_dir), "--prompts", str(prompts), "--out", str(out))
    args.backend, args.dtype, args.max_new_tokens = "vllm", "bf16", 5
    results = execute(args)
    llm = fake_vllm.instances[0]
    assert llm.kwargs == {"model": str(tiny_model_dir), "dtype": "bfloat16", "seed": 0}
    assert llm.calls[0]["sampling"].kwargs == {"max_tokens": 5, "temperature": 0.0}
    assert llm.calls[0]["lora"] is None
    tokenizer = llm.get_tokenizer()
    want = {render_prompt(tokenizer, Conversation.user(f"How do I boil {i} eggs?")) for i in range(3)}
    assert set(llm.calls[0]["prompts"]) == want
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["response"].startswith("reply ") for r in rows)
    assert results["model"]["backend"] == "vllm"

    again = execute(args)  # answers come from the cache: vLLM is not asked again
    assert len(fake_vllm.instances[1].calls) == 0 and again["model"]["fingerprint"] == rows[0]["fingerprint"]


def test_vllm_generator_prefill_stop_chunks_and_sampling(monkeypatch, tiny_model_dir, fake_vllm):
    import safeft.eval.vllm_backend as backend

    monkeypatch.setattr(backend, "CHUNK", 2)
    config = GenerationConfig(
        max_new_tokens=7, do_sample=True, temperature=0.7, top_p=0.9, seed=3, stop=["###"]
    )
    generator = backend.VLLMGenerator(str(tiny_model_dir), config)
    seen: list[list[int]] = []
    conversations = [Conversation.user("Name a fruit.", prefill="Sure, here")] * 3
    texts = generator.generate(conversations, on_batch=lambda idx, _: seen.append(idx))
    assert texts == ["reply 0", "reply 1", "reply 2"]  # cut at the stop string
    assert seen == [[0, 1], [2]]
    llm = fake_vllm.instances[0]
    assert all(p.endswith("Sure, here") for c in llm.calls for p in c["prompts"])
    assert llm.calls[0]["sampling"].kwargs == {
        "max_tokens": 7,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 3,
        "stop": ["###"],
    }


def test_vllm_serves_an_adapter_with_its_rank(tmp_path, tiny_model_dir, fake_vllm):
    from safeft.eval.vllm_backend import VLLMGenerator, vllm_fingerprint

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    generator = VLLMGenerator(str(tiny_model_dir), GenerationConfig(), adapter=str(adapter))
    assert generator.llm.kwargs["enable_lora"] is True and generator.llm.kwargs["max_lora_rank"] == 8
    generator.generate([Conversation.user("Hi")])
    lora = generator.llm.calls[0]["lora"]
    assert (lora.name, lora.lora_id, lora.path) == ("adapter", 1, str(adapter))
    from safeft.models import model_fingerprint

    assert vllm_fingerprint(str(tiny_model_dir), None, None) != model_fingerprint(str(tiny_model_dir))
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter folder"):
        VLLMGenerator(str(tiny_model_dir), GenerationConfig(), adapter=str(tmp_path))


def test_vllm_errors_say_what_to_do(monkeypatch, tmp_path, tiny_model_dir):
    from safeft.eval.vllm_backend import VLLMGenerator

    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install 'safeft\[vllm\]'"):
        VLLMGenerator(str(tiny_model_dir), GenerationConfig())
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="is a GGUF model; give a model folder"):
        VLLMGenerator(str(gguf), GenerationConfig())
    from safeft.commands.eval import execute

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    args = eval_args("--model", "m", "--prompts", str(prompts), "--out", str(tmp_path / "o"))
    args.backend, args.endpoint = "vllm", "http://127.0.0.1:9/v1"
    with pytest.raises(ValueError, match="does not combine with --endpoint"):
        execute(args)
