"""Safety evaluation: prompt sets x attacks x judges, over-refusal, task accuracy, reports.

Modules: ``prompts`` (set loaders), ``attacks/`` (one transform per file), ``generation`` (batched
HF generation), ``openai_backend`` (OpenAI-compatible endpoints), ``cache`` (resumable JSONL
cache), ``judges/``, ``metrics`` (ASR, Wilson intervals), ``tasks`` (exact answer parsers),
``suite`` (YAML suites), ``runner`` (``results.json``), ``plots`` and ``report``.
"""
