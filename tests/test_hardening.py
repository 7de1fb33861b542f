"""Bad inputs and faults (issue 11), one table row each: argv + input files -> exit code, a substring of
the message, and no result file written. Tiny local models and stub HTTP servers on 127.0.0.1 only.

Add a case: one ``Case(...)`` line. Placeholders in argv and file names: ``{model}`` (a tiny model
folder), ``{tmp}`` (the test's folder), ``{out}`` (``{tmp}/out``), ``{recipe}`` (a tiny DeRTa recipe),
``{url}`` (a stub endpoint, see ``Stub``), ``{broken}`` (a model folder with corrupt weights).
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from safeft.cli import main
from safeft.config import ConfigError, parse_overrides

from derta_tiny import tiny_recipe

SECRET = "sk-hardening-secret-0123456789"
ASFT_KEYS = ("aligned", "unaligned", "direction", "other_direction", "adapter", "other_model")
RESULT_FILES = (
    *("results.json", "report.md", "judged.jsonl", "adapter", "merged", "train_log.json", "agree.json"),
    *("judge.json", "head.safetensors", "direction.safetensors", "direction.json", "sweep.json"),
    *("adapter_model.safetensors", "safelora_report.json"),
)


# --------------------------------------------------------------------------------------- stub servers
class Stub:
    """An OpenAI-compatible stub on 127.0.0.1. ``mode``: ``ok`` (generation answers; judge prompts
    get prose, i.e. unusable verdicts), ``null`` (content null), ``redirect`` (302 to ``target``),
    ``echo`` (the judge reply echoes the request headers)."""

    def __init__(self, mode: str = "ok", target: str = ""):
        self.mode, self.target = mode, target
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict, extra: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, body: dict) -> None:
                stub.requests.append(body)
                stub.headers.append(dict(self.headers))
                if stub.mode == "redirect":
                    self._send(302, {}, {"Location": stub.target + self.path})
                    return
                text = json.dumps(body)
                if stub.mode == "null":
                    content = None
                elif stub.mode == "echo":
                    content = "you sent " + str(self.headers.get("Authorization"))
                elif "VERDICT" in text:
                    content = "Hard to say."  # an unusable judge reply
                else:
                    content = "Sure, here it is."
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def do_GET(self):
                self._handle({"GET": self.path})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self._handle(json.loads(self.rfile.read(n) or b"{}"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GarbageServer:
    """Accepts TCP connections and answers bytes that are not HTTP."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\nnot http at all\r\n")
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


# ------------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    argv: list[str]
    code: int
    message: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    server: str | None = None  # a Stub mode, "garbage" or "closed"
    results_expected: bool = False
    note: str | None = None  # a deprecation note expected on stderr (old flag spellings)


PROMPTS = '{"prompt": "How do I boil an egg?"}\n{"prompt": "Name a colour."}\n'
EVAL = ["eval", "--model", "{model}", "--out", "{out}", "--max-new-tokens", "2"]
EVAL_P = [*EVAL, "--prompts", "{tmp}/p.jsonl"]
SERVED = ["eval", "--endpoint", "{url}", "--model", "served", "--out", "{out}", "--prompts", "{tmp}/p.jsonl"]
TRAIN = ["train", "--config", "{recipe}"]
ASFT = ["train", "--config", "{tmp}/asft.yaml", "--model", "{broken}", "--out", "{out}", "--penalty_lambda=0"]
ASFT_FILES = {"asft.yaml": "method: asft\n"}
TASK = '{"prompt": "Add 2 and 3.", "response": "5"}\n'
LABELLED = "prompt,response,label\n" + "".join(
    f"q{i},{'I cannot help.' if i % 2 else 'Sure: step one.'},{'refusal' if i % 2 else 'compliant'}\n"
    for i in range(8)
)

CASES = [
    # -- data: clear errors that fail before any model loads ({broken} would fail later otherwise)
    Case("empty-prompts", ["eval", "--model", "{broken}", "--out", "{out}", "--prompts", "{tmp}/p.jsonl"],
         2, "no prompts (empty file?)", {"p.jsonl": ""}),
    Case("non-utf8-prompts", [*EVAL_P], 2, "p.jsonl: not UTF-8", {"p.jsonl": b'{"prompt": "caf\xe9"}\n'}),
    Case("empty-prompt-field", [*EVAL_P], 2, "field 'prompt' is empty", {"p.jsonl": '{"prompt": "  "}\n'}),
    Case("missing-prompt-field", [*EVAL_P], 2, "no field 'prompt'", {"p.jsonl": '{"text": "hi"}\n'}),
    # -- flags
    Case("ks-not-int", [*EVAL_P, "--ks", "5,abc"], 2, "--ks: expected integers", {"p.jsonl": PROMPTS}),
    Case("batch-size-0", [*EVAL_P, "--batch-size", "0"], 2, "--batch-size: must be >= 1",
         {"p.jsonl": PROMPTS}),
    Case("retries-neg", [*EVAL_P, "--retries", "-1"], 2, "--retries: must be >= 0", {"p.jsonl": PROMPTS}),
    Case("limit-0", [*EVAL_P, "--limit", "0"], 2, "argument --limit: must be >= 1", {"p.jsonl": PROMPTS}),
    Case("unknown-attack", [*EVAL_P, "--attacks", "direct,dan"], 2, "valid attacks:", {"p.jsonl": PROMPTS}),
    Case("chat-template-path-missing", [*EVAL_P, "--chat-template", "{tmp}/none.jinja"], 2,
         "none.jinja': file not found", {"p.jsonl": PROMPTS}),
    # -- models
    Case("broken-weights", ["eval", "--model", "{broken}", "--out", "{out}", "--prompts", "{tmp}/p.jsonl"],
         2, "cannot load the model directory:", {"p.jsonl": PROMPTS}),
    Case("adapter-other-architecture", [*EVAL_P, "--adapter", "{other_adapter}"], 2,
         "cannot be applied to --model", {"p.jsonl": PROMPTS}),
    # -- endpoints
    Case("redirect-refused", [*SERVED], 2, "answered a redirect (HTTP 302)", {"p.jsonl": PROMPTS},
         server="redirect"),
    Case("null-content", [*SERVED], 2, "content is null", {"p.jsonl": PROMPTS}, server="null"),
    Case("not-http", [*SERVED], 2, "not HTTP", {"p.jsonl": PROMPTS}, server="garbage"),
    Case("judge-down-before-generation", [*EVAL_P, "--judge", "llm", "--judge-opt", "base_url={url}",
         "--judge-opt", "model=j"], 2, "cannot reach the LLM judge endpoint", {"p.jsonl": PROMPTS},
         server="closed"),
    Case("judge-all-unusable", [*SERVED, "--judge", "llm", "--judge-opt", "base_url={url}", "--judge-opt",
         "model=j", "--strict"], 3, "INCOMPLETE: 1 result cell(s)", {"p.jsonl": PROMPTS}, server="ok",
         results_expected=True),
    # -- report
    Case("report-without-model", ["report", "{tmp}/run", "--out", "{out}"], 2, "no field 'model'",
         {"run/results.json": '{"version": 1, "attacks": {}}'}),
    # -- training recipes
    Case("recipe-yaml-syntax", ["train", "--config", "{tmp}/bad.yaml"], 2, "bad.yaml:3:1: YAML syntax error",
         {"bad.yaml": "model: x\nlora: [1, 2\n"}),
    Case("recipe-not-utf8", ["train", "--config", "{tmp}/bad.yaml"], 2, "bad.yaml: not UTF-8",
         {"bad.yaml": b"model: caf\xe9\n"}),
    Case("epochs-0", [*TRAIN, "--num_train_epochs", "0", "--max_steps", "-1"], 2,
         "num_train_epochs must be > 0"),
    Case("alpha-0", [*TRAIN, "--lora.alpha", "0"], 2, "lora.alpha must be > 0"),
    Case("grad-accum-0", [*TRAIN, "--gradient_accumulation_steps", "0"], 2,
         "gradient_accumulation_steps must be >= 1"),
    Case("negative-lr-keeps-sign", [*TRAIN, "--learning_rate=-1e-4"], 2,
         "learning_rate must be > 0, got -0.0001"),
    Case("empty-safety-file", [*TRAIN, "--model", "{broken}", "--safety",
         '[{"path": "{tmp}/empty.jsonl", "fields": {"prompt": "q", "harmful_response": "h"}}]'],
         2, "no safety rows", {"empty.jsonl": ""}),
    Case("output-dir-other-recipe", [*TRAIN, "--output_dir", "{tmp}/old"], 2,
         "holds a run made with another recipe", {"old/recipe.yaml": "learning_rate: 0.5\nmodel: other\n"}),
    Case("demo-config-yaml-syntax", ["demo", "--out", "{out}", "--config", "{tmp}/demo.yaml"], 2,
         "demo.yaml:2:1: YAML syntax error", {"demo.yaml": "data: {n_train_triples: [\n"}),
    # -- non-UTF-8 files name the file, wherever data is read
    Case("suite-not-utf8", [*EVAL, "--suite", "{tmp}/s.yaml"], 2, "s.yaml: not UTF-8",
         {"s.yaml": b"name: caf\xe9\n"}),
    Case("sweep-not-utf8", ["sweep", "--config", "{tmp}/sw.yaml"], 2, "sw.yaml: not UTF-8",
         {"sw.yaml": b"name: caf\xe9\n"}),
    Case("templates-not-utf8", [*EVAL_P, "--attacks", "jailbreak-template", "--templates", "{tmp}/t.txt"], 2,
         "t.txt: not UTF-8", {"p.jsonl": PROMPTS, "t.txt": b"caf\xe9 {prompt}\n"}),
    Case("refusal-pool-not-utf8", [*TRAIN, "--refusal_pool", "{tmp}/pool.txt"], 2, "pool.txt: not UTF-8",
         {"pool.txt": b"I can\x92t help with that.\n"}),
    Case("refusal-pool-jsonl-not-utf8", [*TRAIN, "--refusal_pool", "{tmp}/pool.jsonl"], 2,
         "pool.jsonl: not UTF-8", {"pool.jsonl": b'{"refusal": "I can\x92t."}\n'}),
    Case("labelled-jsonl-not-utf8", ["judge", "score", "--judge", "keyword", "--data", "{tmp}/l.jsonl"], 2,
         "l.jsonl: not UTF-8", {"l.jsonl": b'{"prompt": "caf\xe9", "response": "x", "label": "refusal"}\n'}),
    Case("safety-csv-not-utf8", [*TRAIN, "--model", "{broken}", "--safety",
         '[{"path": "{tmp}/s.csv", "fields": {"prompt": "q", "harmful_response": "h"}}]'],
         2, "s.csv: not UTF-8", {"s.csv": b"q,h\ncaf\xe9,x\n"}),
    # -- AsFT training: data and direction are checked before the model ({broken}) loads
    Case("asft-missing-data", [*ASFT, "--train_data", '[{"path": "{tmp}/none.jsonl"}]'], 2,
         "none.jsonl: file not found", ASFT_FILES),
    Case("asft-empty-data", [*ASFT, "--train_data", '[{"path": "{tmp}/task.jsonl"}]'], 2, "no task rows",
         {**ASFT_FILES, "task.jsonl": ""}),
    Case("asft-non-utf8-data", [*ASFT, "--train_data", '[{"path": "{tmp}/task.jsonl"}]'], 2,
         "task.jsonl: not UTF-8", {**ASFT_FILES, "task.jsonl": b'{"prompt": "caf\xe9", "response": "x"}\n'}),
    Case("asft-missing-direction", [*ASFT, "--train_data", '[{"path": "{tmp}/task.jsonl"}]', "--direction",
         "{tmp}/nodir"], 2, "no direction at", {**ASFT_FILES, "task.jsonl": TASK}),
    Case("asft-missing-field", [*ASFT, "--train_data", '[{"path": "{tmp}/task.jsonl"}]'], 2,
         "task.jsonl:1: missing field 'response'", {**ASFT_FILES, "task.jsonl": '{"prompt": "hi"}\n'}),
    # -- old flag spellings: still accepted, with a one-line note (the run then fails on its bad input)
    Case("old-data-root", ["judge", "agree", "--data", "{tmp}/none.csv", "--data-root", "{tmp}"], 2,
         "neither a named set", note="note: --data-root is deprecated, use --data-dir"),
    Case("old-data_root", ["judge", "score", "--data", "{tmp}/none.csv", "--data_root", "{tmp}"], 2,
         "neither a named set", note="note: --data_root is deprecated, use --data-dir"),
    Case("old-max_new_tokens", [*EVAL_P, "--max_new_tokens", "3", "--batch-size", "0"], 2,
         "--batch-size: must be >= 1", {"p.jsonl": PROMPTS},
         note="note: --max_new_tokens is deprecated, use --max-new-tokens"),
    Case("old-output-dir", ["sweep", "--config", "{tmp}/none.yaml", "--output-dir", "{out}"], 2,
         "sweep file not found", note="note: --output-dir is deprecated, use --out"),
    Case("old-output_dir-eval", ["eval", "--model", "{model}", "--prompts", "{tmp}/p.jsonl", "--output_dir",
         "{out}"], 2, "no prompts (empty file?)", {"p.jsonl": ""}, note="use --out"),
    Case("old-chat_template", [*EVAL_P, "--chat_template", "{tmp}/none.jinja"], 2,
         "none.jinja': file not found", {"p.jsonl": PROMPTS}, note="--chat_template is deprecated"),
    Case("old-data_dir-demo", ["demo", "--out", "{out}", "--data_dir", "{tmp}/d", "--config",
         "{tmp}/demo.yaml"], 2, "demo.yaml:2:1: YAML syntax error", {"demo.yaml": "[\n"},
         note="use --data-dir"),
    # -- judge
    Case("judge-missing-data", ["judge", "agree", "--data", "{tmp}/none.csv"], 2, "none.csv' is neither"),
    Case("judge-empty-csv", ["judge", "agree", "--data", "{tmp}/l.csv", "--out", "{out}/agree.json"], 2,
         "l.csv: empty CSV (no header row)", {"l.csv": ""}),
    Case("judge-csv-no-label", ["judge", "agree", "--data", "{tmp}/l.csv", "--out", "{out}/agree.json"], 2,
         "l.csv: unrecognised labelled-response CSV columns", {"l.csv": "prompt,response\nhi,hello\n"}),
    Case("judge-jsonl-bad-json", ["judge", "agree", "--data", "{tmp}/l.jsonl", "--out", "{out}/agree.json"],
         2, "l.jsonl:1: invalid JSON", {"l.jsonl": "{oops\n"}),
    Case("judge-non-utf8", ["judge", "agree", "--data", "{tmp}/l.csv"], 2, "l.csv: not UTF-8",
         {"l.csv": b"prompt,response,label\ncaf\xe9,x,refusal\n"}),
    Case("judge-limit-0", ["judge", "agree", "--data", "{tmp}/l.csv", "--limit", "0"], 2,
         "--limit must be >= 1, got 0", {"l.csv": LABELLED}),
    Case("judge-reps-0", ["judge", "agree", "--data", "{tmp}/l.csv", "--reps", "0"], 2,
         "--reps must be >= 1, got 0", {"l.csv": LABELLED}),
    Case("judge-threshold-1.5", ["judge", "train", "--data", "{tmp}/l.csv", "--out", "{out}", "--threshold",
         "1.5"], 2, "argument --threshold: must be in [0, 1]", {"l.csv": LABELLED}),
    Case("judge-test-fraction-1", ["judge", "train", "--data", "{tmp}/l.csv", "--out", "{out}",
         "--test-fraction", "1"], 2, "argument --test-fraction: must be in (0, 1)", {"l.csv": LABELLED}),
    Case("judge-batch-size-0", ["judge", "train", "--data", "{tmp}/l.csv", "--out", "{out}", "--batch-size",
         "0"], 2, "argument --batch-size: must be >= 1", {"l.csv": LABELLED}),
    Case("judge-score-no-head", ["judge", "score", "--data", "{tmp}/l.csv", "--judge", "classifier"], 2,
         "needs --head", {"l.csv": LABELLED}),
    Case("judge-score-head-missing", ["judge", "score", "--data", "{tmp}/l.csv", "--judge", "classifier",
         "--head", "{tmp}/nohead"], 2, "nohead", {"l.csv": LABELLED}),
    Case("judge-show-missing", ["judge", "show", "{tmp}/nohead"], 2, "judge.json not found"),
    Case("judge-show-not-json", ["judge", "show", "{tmp}/h"], 2, "h/judge.json: not a judge file",
         {"h/judge.json": "{oops"}),
    Case("judge-unknown", ["judge", "agree", "--data", "{tmp}/l.csv", "--judge", "nope"], 2, "nope",
         {"l.csv": LABELLED}),
    # -- safelora
    Case("safelora-threshold-1.5", ["safelora", "--adapter", "{adapter}", "--direction", "{direction}",
         "--threshold", "1.5", "--out", "{out}"], 2, "argument --threshold: must be in [0, 1]"),
    Case("safelora-top-layers-0", ["safelora", "--adapter", "{adapter}", "--direction", "{direction}",
         "--top-layers", "0", "--out", "{out}"], 2, "argument --top-layers: must be >= 1"),
    Case("safelora-adapter-missing", ["safelora", "--adapter", "{tmp}/none", "--direction", "{direction}",
         "--threshold", "0.5", "--out", "{out}"], 2, "none is not a PEFT adapter directory"),
    Case("safelora-adapter-empty-dir", ["safelora", "--adapter", "{tmp}/ad", "--direction", "{direction}",
         "--threshold", "0.5", "--out", "{out}"], 2, "no adapter_config.json", {"ad/README.md": "x"}),
    Case("safelora-adapter-no-weights", ["safelora", "--adapter", "{tmp}/ad", "--direction", "{direction}",
         "--threshold", "0.5", "--out", "{out}"], 2, "adapter_model.safetensors",
         {"ad/adapter_config.json": '{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}'}),
    Case("safelora-direction-missing", ["safelora", "--adapter", "{adapter}", "--direction", "{tmp}/none",
         "--threshold", "0.5", "--out", "{out}"], 2, "no direction at"),
    Case("safelora-direction-garbage", ["safelora", "--adapter", "{adapter}", "--direction", "{tmp}/dir",
         "--threshold", "0.5", "--out", "{out}"], 2, "direction.safetensors",
         {"dir/direction.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"}),
    Case("safelora-direction-other-model", ["safelora", "--adapter", "{adapter}", "--direction",
         "{other_direction}", "--threshold", "0.5", "--out", "{out}"], 2, "another model"),
    # -- direction
    Case("direction-rank-0", ["direction", "--aligned", "{aligned}", "--unaligned", "{unaligned}", "--out",
         "{out}", "--rank", "0"], 2, "argument --rank: must be >= 1"),
    Case("direction-aligned-missing", ["direction", "--aligned", "{tmp}/none", "--unaligned", "{unaligned}",
         "--out", "{out}"], 2, "none': expected an embedded name"),
    Case("direction-empty-targets", ["direction", "--aligned", "{aligned}", "--unaligned", "{unaligned}",
         "--out", "{out}", "--targets", ","], 2, "--targets"),
    Case("direction-no-such-target", ["direction", "--aligned", "{aligned}", "--unaligned", "{unaligned}",
         "--out", "{out}", "--targets", "nope_proj"], 2, "['nope_proj'] match no linear layer"),
    Case("direction-other-sizes", ["direction", "--aligned", "{aligned}", "--unaligned", "{other_model}",
         "--out", "{out}"], 2, "shape mismatch at model.layers.0"),
]  # fmt: skip


@pytest.fixture(scope="module")
def asft_dirs(tmp_path_factory) -> dict[str, str]:
    """Tiny aligned/unaligned models, their direction, a LoRA adapter on them, and a model and a
    direction of another width (48, not 32)."""
    from peft import LoraConfig, get_peft_model

    from safeft.asft.build import DirectionRequest, compute_direction

    from conftest import make_tiny_model, perturb_attention

    root = tmp_path_factory.mktemp("asft_bad")
    make_tiny_model(64).save_pretrained(root / "unaligned")
    perturb_attention(make_tiny_model(64)).save_pretrained(root / "aligned")
    make_tiny_model(64, hidden=48).save_pretrained(root / "other_unaligned")
    perturb_attention(make_tiny_model(64, hidden=48)).save_pretrained(root / "other_aligned")
    for name, pre in (("direction", ""), ("other_direction", "other_")):
        req = DirectionRequest(str(root / f"{pre}aligned"), str(root / f"{pre}unaligned"), ["q_proj"], rank=2)
        compute_direction(req).save(root / name)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])
    get_peft_model(make_tiny_model(64), lora).save_pretrained(root / "adapter")
    names = ("aligned", "unaligned", "direction", "other_direction", "adapter")
    return {n: str(root / n) for n in names} | {"other_model": str(root / "other_unaligned")}


@pytest.fixture(scope="module")
def broken_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model's config and tokenizer with a corrupt weights file."""
    out = tmp_path_factory.mktemp("broken_model")
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    (out / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    return out


@pytest.fixture(scope="module")
def other_adapter_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A LoRA adapter saved for a tiny model of another width (48, not 32)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from conftest import make_tiny_model

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = make_tiny_model(len(tok), hidden=48)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("other_adapter")
    peft_model.save_pretrained(out)
    return out


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, tiny_model_dir, broken_model_dir, request, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    values = {"model": str(tiny_model_dir), "tmp": str(tmp_path), "out": str(tmp_path / "out")}
    values["broken"] = str(broken_model_dir)
    if "{other_adapter}" in " ".join(case.argv):
        values["other_adapter"] = str(request.getfixturevalue("other_adapter_dir"))
    if any(f"{{{k}}}" in " ".join(case.argv) for k in ASFT_KEYS):
        values.update(request.getfixturevalue("asft_dirs"))
    if "{recipe}" in " ".join(case.argv):
        values["recipe"] = str(tiny_recipe(tmp_path, tiny_model_dir, check={"enabled": False}))
    servers: list = []
    if case.server == "garbage":
        servers.append(GarbageServer())
    elif case.server == "closed":
        values["url"] = closed_port_url()
    elif case.server == "redirect":
        elsewhere = Stub("ok")
        servers += [elsewhere, Stub("redirect", target=elsewhere.url.replace("127.0.0.1", "localhost"))]
    elif case.server:
        servers.append(Stub(case.server))
    if servers:
        values.setdefault("url", servers[-1].url)
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = [_fill(a, values) for a in case.argv]
    try:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code
    finally:
        for s in servers:
            s.close()
    out, err = capsys.readouterr()
    assert code == case.code, f"exit {code}, stderr: {err[-500:]}"
    assert case.message in err, err[-800:]
    assert "Traceback" not in err
    if case.note:
        assert case.note in err and err.count("deprecated") == 1, err[-800:]
    assert SECRET not in out + err
    written = [p.name for p in (tmp_path / "out").rglob("*")] if (tmp_path / "out").exists() else []
    if case.results_expected:
        assert "results.json" in written
    else:
        assert not set(written) & set(RESULT_FILES), written
    if case.server == "redirect":
        assert servers[0].requests == []  # nothing, and so no key, reached the other host
    if case.server == "null":
        cache = tmp_path / "out" / "generations.jsonl"
        assert not cache.exists() or cache.read_text() == ""  # a null answer is never cached


# ----------------------------------------------------------------------------- cases beyond the table
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--output_dir=/x/my-run"], {"output_dir": "/x/my-run"}),
        (["--output-dir", "/x/my-run"], {"output_dir": "/x/my-run"}),
        (["--learning_rate=-1e-4"], {"learning_rate": "-1e-4"}),
        (["--learning_rate", "-1e-4"], {"learning_rate": "-1e-4"}),
        (["--lora.r", "8", "--lora.target-modules=q_proj"], {"lora": {"r": 8, "target_modules": "q_proj"}}),
        (["--name=a=b"], {"name": "a=b"}),
    ],
)
def test_override_parser_keeps_values_intact(argv, expected):
    assert parse_overrides(argv) == expected


EV = ["eval", "--model", "m", "--out", "o", "--prompts", "p"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ([*EV, "--data_dir", "d"], ["--data-dir", "d"]),
        (["eval", "--model", "m", "--prompts", "p", "--output_dir", "o"], ["--out", "o"]),
        ([*EV, "--chat_template=t"], ["--chat-template=t"]),
        ([*EV, "--api_key_env", "K"], ["--api-key-env", "K"]),
        (["judge", "agree", "--data", "x", "--data-root", "r"], ["--data-dir", "r"]),
        (["judge", "train", "--data", "x", "--out", "o", "--test_fraction", "0.5"],
         ["--test-fraction", "0.5"]),
        (["sweep", "--config", "c", "--output-dir", "o"], ["--out", "o"]),
        (["sweep", "--config", "c", "--output_dir", "o"], ["--out", "o"]),
        (["demo", "--data_dir", "d"], ["--data-dir", "d"]),
        (["safelora", "--adapter", "a", "--direction", "d", "--out", "o", "--top_layers", "2"],
         ["--top-layers", "2"]),
        (["direction", "--aligned", "a", "--unaligned", "u", "--out", "o", "--trust_remote_code"],
         ["--trust-remote-code"]),
    ],
)  # fmt: skip
def test_old_flag_spellings_parse_like_the_new_ones(old, new, capsys):
    """The old spelling (last flag of ``old``) gives the same arguments as the canonical one, plus a note."""
    from safeft.cli import build_parser, normalize_flags

    parser = build_parser()
    n_old = len(new) if "=" not in new[0] else 1
    canonical = old[: len(old) - n_old] + new
    rewritten, notes = normalize_flags(parser, old)
    assert rewritten == canonical and len(notes) == 1 and "is deprecated, use" in notes[0]
    assert parser.parse_known_args(rewritten) == parser.parse_known_args(canonical)
    assert normalize_flags(parser, canonical) == (canonical, [])


def test_recipe_field_overrides_keep_their_spelling():
    """``--output_dir``/``--learning_rate`` in ``safeft train`` are recipe fields: no rewrite, no note."""
    from safeft.cli import build_parser, normalize_flags

    argv = ["train", "--config", "c", "--output_dir", "o", "--learning_rate", "1e-4", "--lora.r=4"]
    assert normalize_flags(build_parser(), argv) == (argv, [])


@pytest.mark.parametrize("argv", [["output_dir", "x"], ["--=x"], ["--a..b", "1"], ["--lr"]])
def test_override_parser_rejects_malformed(argv):
    with pytest.raises(ConfigError):
        parse_overrides(argv)


def test_judge_echoing_headers_never_stores_the_key(tmp_path, monkeypatch):
    """A judge whose reply echoes the request headers: the key is redacted in every file written."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    (tmp_path / "p.jsonl").write_text(PROMPTS)
    gen, judge = Stub("ok"), Stub("echo")
    try:
        code = main(
            ["eval", "--endpoint", gen.url, "--model", "m", "--prompts", str(tmp_path / "p.jsonl"), "--out",
             str(tmp_path / "out"), "--judge", "llm", "--judge-opt", f"base_url={judge.url}", "--judge-opt",
             "model=j", "--judge-api-key-env", "JUDGE_KEY"]
        )  # fmt: skip
    finally:
        gen.close()
        judge.close()
    assert code == 0
    assert any(h.get("Authorization") == f"Bearer {SECRET}" for h in judge.headers)
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f.name
    assert "***" in (tmp_path / "out" / "judged.jsonl").read_text()


def test_each_endpoint_has_its_own_key_and_plain_http_warns(monkeypatch, caplog):
    from safeft.eval.http_client import ChatClient

    monkeypatch.setenv("GEN_KEY", "k-gen")
    monkeypatch.delenv("PAIR_ATTACKER_API_KEY", raising=False)
    assert ChatClient("http://127.0.0.1:9/v1", api_key_env="GEN_KEY").has_key
    assert not ChatClient("http://127.0.0.1:9/v1", api_key_env="PAIR_ATTACKER_API_KEY").has_key
    caplog.clear()
    ChatClient("http://127.0.0.1:9/v1", api_key_env="GEN_KEY")
    assert "plain http://" not in caplog.text  # loopback: fine
    ChatClient("http://judge.example.org/v1", api_key_env="GEN_KEY")
    assert "plain http://" in caplog.text and "k-gen" not in caplog.text
    with pytest.raises(ValueError, match="retries must be >= 0"):
        ChatClient("http://127.0.0.1:9/v1", retries=-1)


def test_output_dir_overwrite_starts_afresh(tmp_path, tiny_model_dir):
    """``--overwrite true`` accepts an output_dir that holds another recipe's run (old checkpoints go)."""
    from safeft.derta.trainer import DeRTaConfig
    from safeft.training.base import check_output_dir

    old = tmp_path / "old"
    (old / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (old / "recipe.yaml").write_text(yaml.safe_dump({"learning_rate": 0.5}))
    config = DeRTaConfig(output_dir=str(old))
    with pytest.raises(ConfigError, match="another recipe"):
        check_output_dir(config)
    config.overwrite = True
    check_output_dir(config)
    assert not (old / "checkpoints").exists()


def test_version_and_help_show_defaults_and_names(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("safeft ")
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 3)" in text  # --retries
    assert "keyword, classifier, llm" in text and "prefill-harmful-k" in text and "advbench" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "refuse harmful requests" in capsys.readouterr().out


def test_attack_names_in_help_match_the_registry():
    from safeft.commands.eval import ATTACK_NAMES
    from safeft.eval.attacks import ATTACKS

    assert set(ATTACK_NAMES) == set(ATTACKS)


def test_readme_api_example_runs(tmp_path, tiny_model_dir, monkeypatch):
    """The README's Python API block, with the tiny model in place of the embedded one."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert 'MODEL, PROMPTS = "smollm2-135m-instruct", "prompts.jsonl"' in block
    (tmp_path / "prompts.jsonl").write_text(PROMPTS)
    monkeypatch.chdir(tmp_path)
    code = block.replace('"smollm2-135m-instruct"', repr(str(tiny_model_dir))).replace(
        "max_new_tokens=32", "max_new_tokens=2"
    )
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    results = scope["results"]
    assert set(results["attacks"]) == {"direct", "completion"}
    assert all(c["n_total"] == 2 for c in results["attacks"].values())


def test_evaluate_takes_a_loaded_model(tmp_path, tiny_model_dir):
    import safeft
    from safeft.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    (tmp_path / "p.jsonl").write_text(PROMPTS)
    results = safeft.evaluate(
        model, tokenizer=tokenizer, prompts=tmp_path / "p.jsonl", out=tmp_path / "out", max_new_tokens=2
    )
    assert results["attacks"]["direct"]["n_total"] == 2
    assert results["model"]["fingerprint"].startswith("mem-")
    assert (tmp_path / "out" / "results.json").is_file()
    assert {"DeRTaConfig", "AsFTTrainer", "evaluate"} <= set(dir(safeft))


def test_judge_agree_sends_the_key_of_its_own_variable(tmp_path, monkeypatch, capsys):
    """``safeft judge agree --judge-api-key-env`` (as in ``safeft eval``): that variable's key, unprinted."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    (tmp_path / "l.csv").write_text(LABELLED)
    stub = Stub("ok")
    try:
        code = main(
            ["judge", "agree", "--data", str(tmp_path / "l.csv"), "--judge", "llm", "--judge-opt",
             f"base_url={stub.url}", "--judge-opt", "model=j", "--judge-api-key-env", "JUDGE_KEY",
             "--reps", "5"]
        )  # fmt: skip
    finally:
        stub.close()
    out, err = capsys.readouterr()
    assert code == 0, err[-500:]
    assert stub.headers and all(h.get("Authorization") == f"Bearer {SECRET}" for h in stub.headers)
    assert SECRET not in out + err
