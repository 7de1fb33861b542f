"""Self-distillation: cached by model fingerprint and decoding settings; unusable answers dropped."""

from __future__ import annotations

from safeft.models import load_model_and_tokenizer
from safeft.training.self_distill import drop_reason, self_distill

PROMPTS = [(f"p{i}", f"Write one word about the number {i}.") for i in range(5)]


def test_second_run_generates_nothing_and_returns_the_same_answers(tmp_path, tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    kwargs = {"fingerprint": "tiny", "max_new_tokens": 6, "batch_size": 2, "cache_dir": tmp_path}
    first = self_distill(model, tokenizer, PROMPTS, **kwargs)
    assert first.generated == 5
    cache_file = tmp_path / "self_distill" / "tiny.jsonl"
    assert len(cache_file.read_text().splitlines()) == 5
    second = self_distill(model, tokenizer, PROMPTS, **kwargs)
    assert second.generated == 0
    assert [p.response for p in second.pairs] == [p.response for p in first.pairs]
    assert second.dropped == first.dropped and len(second.pairs) + sum(second.dropped.values()) == 5
    # another decoding setting or another prompt is generated anew, never read from a stale entry
    other = self_distill(model, tokenizer, PROMPTS, **{**kwargs, "max_new_tokens": 7})
    assert other.generated == 5
    edited = self_distill(model, tokenizer, [("p0", "Edited prompt.")], **kwargs)
    assert edited.generated == 1
    # another model (fingerprint) has its own file
    self_distill(model, tokenizer, PROMPTS[:1], **{**kwargs, "fingerprint": "other"})
    assert (tmp_path / "self_distill" / "other.jsonl").is_file()


def test_an_interrupted_run_keeps_finished_batches(tmp_path, tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    kwargs = {"fingerprint": "tiny", "max_new_tokens": 4, "batch_size": 1, "cache_dir": tmp_path}
    self_distill(model, tokenizer, PROMPTS[:2], **kwargs)  # as if the run stopped after 2 answers
    resumed = self_distill(model, tokenizer, PROMPTS, **kwargs)
    assert resumed.generated == 3


def test_refusals_loops_and_empty_answers_are_dropped():
    assert drop_reason("  ") == "empty"
    assert drop_reason("Sorry, I can't help with that.") == "refusal"
    assert drop_reason("the the the the the the the the the the the") == "repetitive"
    assert drop_reason("Paris is the capital of France.") is None


def test_two_processes_on_one_cold_cache_generate_each_answer_once(tmp_path, tiny_model_dir):
    """``safeft sweep --jobs 2``: two runs of one base model start self-distilling at the same moment. The
    cache lock makes the second wait and read the first one's answers (flock locks conflict between two
    open() calls, so two threads stand in for two processes)."""
    import threading

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    kwargs = {"fingerprint": "tiny", "max_new_tokens": 6, "batch_size": 1, "cache_dir": tmp_path}
    start = threading.Barrier(2)
    results = []

    def run() -> None:
        start.wait()
        results.append(self_distill(model, tokenizer, PROMPTS, **kwargs))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.generated for r in results) == [0, 5]
    assert [p.response for p in results[0].pairs] == [p.response for p in results[1].pairs]
    assert len((tmp_path / "self_distill" / "tiny.jsonl").read_text().splitlines()) == 5


def test_the_cache_lock_is_exclusive(tmp_path):
    import threading
    import time

    from safeft.eval.cache import exclusive

    events = []

    def hold(name: str, seconds: float) -> None:
        with exclusive(tmp_path / "c.jsonl"):
            events.append(f"{name} in")
            time.sleep(seconds)
            events.append(f"{name} out")

    first = threading.Thread(target=hold, args=("a", 0.3))
    first.start()
    time.sleep(0.05)
    hold("b", 0)
    first.join()
    assert events == ["a in", "a out", "b in", "b out"]
