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
import sys
from pathlib import Path
from typing import Any

from safeft.commands.argtypes import at_least

log = logging.getLogger(__name__)


#: the names ``--attacks`` accepts (kept equal to ``safeft.eval.attacks.ATTACKS`` by a test; listed
#: here so that ``--help`` need not import torch)
ATTACK_NAMES = (
    "direct",
    "completion",
    "prefill-harmful-k",
    "codeattack",
    "cipher",
    "jailbreak-template",
    "pair",
    "autodan",
)


def _csv(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def _ks(text: str) -> list[int]:
    """``--ks 0,5,10``: comma-separated integers >= 0."""
    out = []
    for item in _csv(text) or []:
        try:
            k = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected integers >= 0 (e.g. 0,5,10), got {item!r}") from None
        if k < 0:
            raise argparse.ArgumentTypeError(f"expected integers >= 0, got {k}")
        out.append(k)
    if not out:
        raise argparse.ArgumentTypeError("expected at least one prefill length, e.g. 0,5,10")
    return out


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
    p.add_argument(
        "--prompts-kind",
        choices=("harmful", "benign"),
        default="harmful",
        help="--prompts are harmful (attack success: share answered) or benign (over-refusal: share refused)",
    )
    p.add_argument(
        "--attacks",
        help="comma-separated attacks (overrides the suite's; default direct), from: "
        + ", ".join(ATTACK_NAMES),
    )
    from safeft.eval.judges import JUDGES
    from safeft.eval.prompts import PROMPT_SETS

    p.add_argument(
        "--judge",
        help=f"judge of refusal/compliance, one of: {', '.join(JUDGES)} (default: the suite's, else keyword)",
    )
    p.add_argument(
        "--judge-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="judge option, repeatable (classifier: path=HEAD_DIR; llm: base_url=URL, model=NAME)",
    )
    p.add_argument("--limit", type=at_least(1), help="prompts per set (seeded sample)")
    p.add_argument("--seed", type=int, help="sampling seed (default: the suite's, else 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--data-dir",
        help=f"folder the suite's data paths are relative to (suite sets: {', '.join(PROMPT_SETS)})",
    )
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=at_least(1), help="tokens per answer (default: the suite's)")
    g.add_argument("--batch-size", type=at_least(1), help="prompts per batch (default: the suite's)")
    g.add_argument(
        "--bf16", action="store_true", help="bf16 autocast (faster on CPUs with bf16; may change outputs)"
    )
    g.add_argument("--chat-template", help="Jinja chat template (text or file) overriding the tokenizer's")
    g.add_argument("--device", help="cpu | cuda | cuda:N | mps (default: the suite's, else the GPU if any)")
    g.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="weights' dtype (default: the suite's, else auto = bf16 on GPUs that have it, else fp32)",
    )
    g.add_argument(
        "--backend",
        choices=["hf", "vllm"],
        default="hf",
        help="local generation: hf (transformers generate) or vllm (in-process vLLM, CUDA; "
        "pip install 'safeft[vllm]'; --model must be a folder or hub id)",
    )
    e = p.add_argument_group("OpenAI-compatible endpoint")
    e.add_argument("--endpoint", help="base URL (e.g. http://127.0.0.1:8000/v1); --model is the served name")
    e.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the --endpoint's API key")
    e.add_argument(
        "--judge-api-key-env",
        help="env var holding the LLM judge's API key (default: the judge's api_key_env option, "
        "else OPENAI_API_KEY)",
    )
    e.add_argument("--concurrency", type=at_least(1), default=4, help="requests in flight")
    e.add_argument("--timeout", type=at_least(0, float), default=60.0, help="seconds per request")
    e.add_argument("--retries", type=at_least(0), default=3, help="retries of a failed request")
    a = p.add_argument_group("attack options")
    a.add_argument("--ks", type=_ks, help="prefill-harmful-k lengths, e.g. 0,5,10,20,40")
    a.add_argument("--opener", help="completion attack prefill when a prompt has no target")
    a.add_argument("--templates", help="jailbreak-template file ({prompt} placeholder)")
    a.add_argument("--cipher-scheme", choices=["caesar", "selfcipher"])
    a.add_argument("--pair-iters", type=at_least(1), help="PAIR rounds per prompt (default 3)")
    a.add_argument("--pair-attacker", help="PAIR attacker: local model name/dir (default: the target)")
    a.add_argument("--pair-attacker-endpoint", help="PAIR attacker: OpenAI-compatible base URL")
    a.add_argument("--pair-attacker-model", help="PAIR attacker: served model name at that endpoint")
    a.add_argument(
        "--pair-attacker-api-key-env",
        default="PAIR_ATTACKER_API_KEY",
        help="env var holding the PAIR attacker endpoint's API key (none sent when unset)",
    )
    a.add_argument("--autodan-steps", type=int, help="AutoDAN generations per prompt (default 10)")
    a.add_argument("--autodan-population", type=int, help="AutoDAN templates per generation (default 16)")
    a.add_argument("--autodan-seconds", type=float, help="AutoDAN wall-time budget per prompt")
    a.add_argument("--autodan-target", help="AutoDAN target string for prompts without one (Sure, here is)")
    a.add_argument("--autodan-mutator-endpoint", help="AutoDAN LLM mutator: OpenAI-compatible base URL")
    a.add_argument("--autodan-mutator-model", help="AutoDAN LLM mutator: served model name")
    p.add_argument("--label", help="name of this run in reports")
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with code 3 when a result cell has no usable verdict (all responses unjudged)",
    )
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
        suite = prompts_suite(args.prompts, args.prompt_field, attacks, args.prompts_kind)
    gen = suite.generation
    if args.max_new_tokens is not None:
        gen.max_new_tokens = args.max_new_tokens
    if args.batch_size is not None:
        gen.batch_size = args.batch_size
    if args.bf16:
        gen.bf16_autocast = True
    if getattr(args, "device", None):
        gen.device = args.device
    if getattr(args, "dtype", None):
        gen.dtype = args.dtype
    opts = suite.attack_options
    if args.ks:
        opts["ks"] = list(args.ks)
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

    model, tokenizer = load_model_and_tokenizer(name, gen_config.dtype, chat_template=chat_template)
    if adapter:
        from peft import PeftModel

        from safeft.asft.adapter import require_adapter_dir

        require_adapter_dir(adapter)
        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"--adapter {adapter}: cannot be applied to --model {name} (an adapter trained for another "
                f"architecture or size?): {first}"
            ) from None
    model.eval()
    fingerprint = model_fingerprint(name, adapter)
    if chat_template:
        fingerprint = hashlib.sha256(f"{fingerprint}|{chat_template}".encode()).hexdigest()[:16]
    return HFGenerator(model, tokenizer, gen_config), fingerprint


def _in_memory_generator(model, tokenizer, chat_template: str | None, gen_config):
    """An HFGenerator over a model object; its fingerprint hashes the weights (cache key)."""
    import torch

    from safeft.eval.generation import HFGenerator

    if tokenizer is None:
        raise ValueError("evaluate(model=<a model object>) needs tokenizer=")
    if chat_template:
        tokenizer.chat_template = chat_template
    model.eval()
    digest = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().numpy().tobytes()[:4096])
            digest.update(str(float(p.detach().float().sum())).encode())
    return HFGenerator(model, tokenizer, gen_config), "mem-" + digest.hexdigest()[:12]


def _endpoint_generator(
    url: str,
    model: str,
    args: argparse.Namespace,
    gen_config,
    api_key_env: str | None = None,
    what: str = "--endpoint",
):
    """An :class:`OpenAIChatGenerator` for ``url``, probed once; its key comes from ``api_key_env``
    (default ``--api-key-env``): each endpoint has its own key variable."""
    from safeft.eval.openai_backend import EndpointError, OpenAIChatGenerator

    gen = OpenAIChatGenerator(
        url,
        model,
        gen_config,
        api_key_env=api_key_env or args.api_key_env,
        timeout=args.timeout,
        retries=args.retries,
        concurrency=args.concurrency,
        what=what,
    )
    try:
        gen.check_reachable()
    except EndpointError as exc:
        raise EndpointError(
            f"{exc}. Start the server (or fix {what}) and rerun the same command: generations already "
            f"saved in {Path(args.out) / 'generations.jsonl'} are reused"
        ) from None
    return gen, gen.fingerprint()


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """``safeft eval``: run, print the summary; a cell with no usable verdict is reported loudly on
    stderr (and in ``results.json["incomplete"]``), and makes the exit code 3 with ``--strict``."""
    results = execute(args)
    print(summary_table(results))
    if not args.no_report:
        print(f"report: {Path(args.out) / 'report.html'} (and report.md)")
    print(f"results: {Path(args.out) / 'results.json'}")
    if results.get("incomplete"):
        print(
            f"safeft eval: INCOMPLETE: {len(results['incomplete'])} result cell(s) have no usable verdict "
            f"(every response unjudged, e.g. an LLM judge that gave only unusable replies): "
            f"{', '.join(results['incomplete'])}. Their rates are empty; see judged.jsonl.",
            file=sys.stderr,
        )
        return 3 if args.strict else 0
    return 0


def execute(args: argparse.Namespace, local_model: tuple[Any, Any] | None = None) -> dict:
    """The evaluation behind ``safeft eval`` (and :func:`safeft.evaluate`); returns ``results``.

    ``local_model``: an already loaded ``(model, tokenizer)`` used instead of loading ``--model``.
    """
    from safeft.eval.judges import get_judge
    from safeft.eval.report import write_report
    from safeft.eval.runner import EvalRunner, ModelInfo

    suite = build_suite(args)
    judge_opts = {**suite.judge_options, **_judge_options(args.judge_opt)}
    if args.judge_api_key_env and suite.judge == "llm":
        judge_opts["api_key_env"] = args.judge_api_key_env
    judge = get_judge(suite.judge, **judge_opts)  # fail on a bad judge before loading any model
    if hasattr(judge, "check_reachable"):
        judge.check_reachable()  # an LLM judge that is down fails now, not after all generation

    if args.endpoint and args.adapter:
        raise ValueError("--adapter applies to a local model; with --endpoint, serve the adapter instead")
    vllm = getattr(args, "backend", "hf") == "vllm"  # safeft.evaluate's namespace has no backend
    if vllm and (args.endpoint or local_model is not None):
        raise ValueError("--backend vllm loads --model itself: it does not combine with --endpoint")
    if vllm and any("autodan" in s.attacks for s in suite.safety):
        raise ValueError(
            "attack 'autodan' needs the target's log-probabilities from the HF model (white-box fitness): "
            "evaluate autodan with --backend hf, or drop it from --attacks"
        )
    if args.endpoint and any("autodan" in s.attacks for s in suite.safety):
        raise ValueError(
            "attack 'autodan' needs the target's log-probabilities (white-box fitness), which --endpoint "
            "does not give: evaluate autodan with a local --model, or drop it from --attacks"
        )
    # every prompt set and task file is read now: bad data fails in seconds, before any model loads
    runner = EvalRunner(suite, None, ModelInfo(args.model, ""), judge, args.out, args.limit, args.seed)
    runner.preload()
    if local_model is not None:
        generator, fingerprint = _in_memory_generator(*local_model, args.chat_template, suite.generation)
        backend = "hf"
    elif args.endpoint:
        generator, fingerprint = _endpoint_generator(args.endpoint, args.model, args, suite.generation)
        backend = "openai"
    elif vllm:
        from safeft.eval.vllm_backend import VLLMGenerator, vllm_fingerprint

        generator = VLLMGenerator(args.model, suite.generation, args.adapter, args.chat_template)
        fingerprint = vllm_fingerprint(args.model, args.adapter, args.chat_template)
        backend = "vllm"
    else:
        generator, fingerprint = _local_generator(
            args.model, args.adapter, args.chat_template, suite.generation
        )
        backend = "hf"

    attacker = attacker_fp = None
    uses_pair = any("pair" in s.attacks for s in suite.safety)
    if uses_pair and args.pair_attacker_endpoint:
        attacker, attacker_fp = _endpoint_generator(
            args.pair_attacker_endpoint,
            args.pair_attacker_model or args.model,
            args,
            suite.generation,
            api_key_env=args.pair_attacker_api_key_env,
            what="--pair-attacker-endpoint",
        )
    elif uses_pair and args.pair_attacker:
        attacker, attacker_fp = _local_generator(args.pair_attacker, None, None, suite.generation)

    runner.generator = generator
    runner.model = ModelInfo(args.model, fingerprint, args.adapter, backend, args.label)
    runner.attacker, runner.attacker_fingerprint = attacker, attacker_fp
    if args.autodan_mutator_endpoint and any("autodan" in s.attacks for s in suite.safety):
        import dataclasses

        long_gen = dataclasses.replace(suite.generation, max_new_tokens=512)  # a whole template
        runner.autodan_mutator = _endpoint_generator(  # type: ignore[attr-defined]
            args.autodan_mutator_endpoint, args.autodan_mutator_model or args.model, args, long_gen
        )
    results = runner.run()
    if not args.no_report:
        write_report([results], args.out)
    return results


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
