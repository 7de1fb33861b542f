"""``safeft eval``: attack success rates, over-refusal and task accuracy of a model or adapter.

    safeft eval --model M [--adapter A] (--suite SUITE.yaml | --prompts FILE.jsonl|.csv
                [--prompt-field F]) [--attacks direct,completion,...] [--judge keyword|classifier|llm]
                [--limit N] [--seed S] --out DIR

``M`` is an embedded name, a model directory, a hub id or a GGUF path — or, with ``--endpoint URL``,
the model name an OpenAI-compatible server serves. Writes ``DIR/results.json``,
``DIR/generations.jsonl`` (the resumable cache), ``DIR/judged.jsonl``, ``DIR/report.md``,
``DIR/report.html`` and ``DIR/plots/*.png``. Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _csv(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="attack success rate, over-refusal and task accuracy of a model/adapter",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", required=True, help="embedded name | model dir | hub id | .gguf | served name")
    p.add_argument("--adapter", help="PEFT LoRA adapter folder applied on top of --model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--suite", help="suite YAML (see suites/default.yaml)")
    src.add_argument("--prompts", help="a bare .jsonl/.json/.csv file of prompts (id optional)")
    p.add_argument("--prompt-field", default="prompt", help="field holding the prompt (--prompts)")
    p.add_argument("--attacks", help="comma-separated attacks (overrides the suite's); default direct")
    p.add_argument("--judge", help="keyword | classifier | llm (default: the suite's, else keyword)")
    p.add_argument(
        "--judge-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="judge option, repeatable (classifier: path=HEAD_DIR; llm: base_url=URL, model=NAME)",
    )
    p.add_argument("--limit", type=int, help="prompts per set (seeded sample)")
    p.add_argument("--seed", type=int, help="sampling seed (default: the suite's, else 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data-dir", help="folder the suite's data paths are relative to")
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument(
        "--bf16", action="store_true", help="bf16 autocast (faster on CPUs with bf16; may change outputs)"
    )
    g.add_argument("--chat-template", help="Jinja chat template (text or file) overriding the tokenizer's")
    e = p.add_argument_group("OpenAI-compatible endpoint")
    e.add_argument("--endpoint", help="base URL (e.g. http://127.0.0.1:8000/v1); --model is the served name")
    e.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key")
    e.add_argument("--concurrency", type=int, default=4)
    e.add_argument("--timeout", type=float, default=60.0)
    e.add_argument("--retries", type=int, default=3)
    a = p.add_argument_group("attack options")
    a.add_argument("--ks", help="prefill-harmful-k lengths, e.g. 0,5,10,20,40")
    a.add_argument("--opener", help="completion attack prefill when a prompt has no target")
    a.add_argument("--templates", help="jailbreak-template file ({prompt} placeholder)")
    a.add_argument("--cipher-scheme", choices=["caesar", "selfcipher"])
    a.add_argument("--pair-iters", type=int, help="PAIR rounds per prompt (default 3)")
    a.add_argument("--pair-attacker", help="PAIR attacker: local model name/dir (default: the target)")
    a.add_argument("--pair-attacker-endpoint", help="PAIR attacker: OpenAI-compatible base URL")
    a.add_argument("--pair-attacker-model", help="PAIR attacker: served model name at that endpoint")
    a.add_argument("--autodan-steps", type=int, help="AutoDAN generations per prompt (default 10)")
    a.add_argument("--autodan-population", type=int, help="AutoDAN templates per generation (default 16)")
    a.add_argument("--autodan-seconds", type=float, help="AutoDAN wall-time budget per prompt")
    a.add_argument("--autodan-target", help="AutoDAN target string for prompts without one (Sure, here is)")
    a.add_argument("--autodan-mutator-endpoint", help="AutoDAN LLM mutator: OpenAI-compatible base URL")
    a.add_argument("--autodan-mutator-model", help="AutoDAN LLM mutator: served model name")
    p.add_argument("--label", help="name of this run in reports")
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.set_defaults(handler=run)


def _judge_options(items: list[str]) -> dict[str, Any]:
    import yaml

    opts: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--judge-opt {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        opts[key.strip().replace("-", "_")] = yaml.safe_load(value) if value else ""
    return opts


def build_suite(args: argparse.Namespace):
    from safeft.eval.attacks import check_attack_names
    from safeft.eval.suite import load_suite, prompts_suite

    attacks = _csv(args.attacks)
    if attacks:
        check_attack_names(attacks)
    if args.suite:
        suite = load_suite(args.suite, data_dir=args.data_dir)
        if attacks:
            for spec in suite.safety:
                spec.attacks = list(attacks)
    else:
        suite = prompts_suite(args.prompts, args.prompt_field, attacks)
    gen = suite.generation
    if args.max_new_tokens is not None:
        gen.max_new_tokens = args.max_new_tokens
    if args.batch_size is not None:
        gen.batch_size = args.batch_size
    if args.bf16:
        gen.bf16_autocast = True
    opts = suite.attack_options
    if args.ks:
        opts["ks"] = [int(k) for k in _csv(args.ks) or []]
    for name in ("opener", "templates"):
        if getattr(args, name):
            opts[name] = getattr(args, name)
    if args.cipher_scheme:
        opts["scheme"] = args.cipher_scheme
    if args.pair_iters is not None:
        opts["iters"] = args.pair_iters
    for name in ("autodan_steps", "autodan_population", "autodan_seconds", "autodan_target"):
        if getattr(args, name, None) is not None:
            opts[name] = getattr(args, name)
    if args.judge:
        suite.judge = args.judge
    return suite


def _local_generator(name: str, adapter: str | None, chat_template: str | None, gen_config):
    from safeft.eval.generation import HFGenerator
    from safeft.models import load_model_and_tokenizer, model_fingerprint

    model, tokenizer = load_model_and_tokenizer(name, chat_template=chat_template)
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"--adapter {adapter}: no adapter_config.json (not a PEFT adapter folder)"
            )
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    fingerprint = model_fingerprint(name, adapter)
    if chat_template:
        fingerprint = hashlib.sha256(f"{fingerprint}|{chat_template}".encode()).hexdigest()[:16]
    return HFGenerator(model, tokenizer, gen_config), fingerprint


def _endpoint_generator(url: str, model: str, args: argparse.Namespace, gen_config):
    from safeft.eval.openai_backend import EndpointError, OpenAIChatGenerator

    gen = OpenAIChatGenerator(
        url,
        model,
        gen_config,
        api_key_env=args.api_key_env,
        timeout=args.timeout,
        retries=args.retries,
        concurrency=args.concurrency,
    )
    try:
        gen.check_reachable()
    except EndpointError as exc:
        raise EndpointError(
            f"{exc}. Start the server (or fix --endpoint) and rerun the same command: generations already "
            f"saved in {Path(args.out) / 'generations.jsonl'} are reused"
        ) from None
    return gen, gen.fingerprint()


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from safeft.eval.judges import get_judge
    from safeft.eval.report import write_report
    from safeft.eval.runner import EvalRunner, ModelInfo

    suite = build_suite(args)
    judge_opts = {**suite.judge_options, **_judge_options(args.judge_opt)}
    judge = get_judge(suite.judge, **judge_opts)  # fail on a bad judge before loading any model

    if args.endpoint and args.adapter:
        raise ValueError("--adapter applies to a local model; with --endpoint, serve the adapter instead")
    if args.endpoint and any("autodan" in s.attacks for s in suite.safety):
        raise ValueError(
            "attack 'autodan' needs the target's log-probabilities (white-box fitness), which --endpoint "
            "does not give: evaluate autodan with a local --model, or drop it from --attacks"
        )
    if args.endpoint:
        generator, fingerprint = _endpoint_generator(args.endpoint, args.model, args, suite.generation)
        backend = "openai"
    else:
        generator, fingerprint = _local_generator(
            args.model, args.adapter, args.chat_template, suite.generation
        )
        backend = "hf"

    attacker = attacker_fp = None
    uses_pair = any("pair" in s.attacks for s in suite.safety)
    if uses_pair and args.pair_attacker_endpoint:
        attacker, attacker_fp = _endpoint_generator(
            args.pair_attacker_endpoint, args.pair_attacker_model or args.model, args, suite.generation
        )
    elif uses_pair and args.pair_attacker:
        attacker, attacker_fp = _local_generator(args.pair_attacker, None, None, suite.generation)

    info = ModelInfo(args.model, fingerprint, args.adapter, backend, args.label)
    runner = EvalRunner(suite, generator, info, judge, args.out, args.limit, args.seed, attacker, attacker_fp)
    if args.autodan_mutator_endpoint and any("autodan" in s.attacks for s in suite.safety):
        import dataclasses

        long_gen = dataclasses.replace(suite.generation, max_new_tokens=512)  # a whole template
        runner.autodan_mutator = _endpoint_generator(  # type: ignore[attr-defined]
            args.autodan_mutator_endpoint, args.autodan_mutator_model or args.model, args, long_gen
        )
    results = runner.run()
    print(summary_table(results))
    if not args.no_report:
        md, page = write_report([results], args.out)
        print(f"report: {page} (and {md.name})")
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def summary_table(results: dict) -> str:
    """A plain-text table of the headline numbers (no model text)."""
    judge = results["judge"]["name"]
    lines = [f"{'attack':<34} {'ASR':>7}  {'95% CI':<15} {'n':>5}  judge"]
    for key, s in results["attacks"].items():
        asr = "–" if s["asr"] is None else f"{100 * s['asr']:.1f}%"
        ci = f"[{100 * s['ci95'][0]:.0f}, {100 * s['ci95'][1]:.0f}]%"
        lines.append(f"{key:<34} {asr:>7}  {ci:<15} {s['n']:>5}  {judge}")
    for set_name, groups in results["over_refusal"].items():
        for cat, s in groups.items():
            rr = "–" if s["refusal_rate"] is None else f"{100 * s['refusal_rate']:.1f}%"
            lines.append(f"{'refusal ' + set_name + '/' + cat:<34} {rr:>7}  {'':<15} {s['n']:>5}  {judge}")
    for task, s in results["tasks"].items():
        acc = "–" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}%"
        lines.append(f"{'accuracy ' + task:<34} {acc:>7}  {'':<15} {s['n']:>5}  exact parser")
    return "\n".join(lines)
