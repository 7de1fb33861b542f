"""Read the 2-D weights of a model one tensor at a time, whatever the model's format.

* A model directory with safetensors is *streamed*: ``safe_open`` memory-maps the shards and
  :meth:`WeightSource.take` copies out one tensor at a time, so nothing else is resident.
* Anything else (embedded/GGUF file, hub id, a directory of another format) is loaded once through
  :mod:`safeft.models`; the source then keeps only the tensors of the wanted layers and drops the
  model, and :meth:`take` pops each tensor so its memory is freed as soon as the caller is done.

Peak memory of a direction computation is therefore one loaded model (or none) plus one layer.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from safeft.asft.targets import module_of

log = logging.getLogger(__name__)

#: keep(module_name) -> whether a loaded source keeps that module's weight
Keep = Callable[[str], bool]


class WeightSource(ABC):
    """The 2-D ``*.weight`` tensors of one model, addressed by module name."""

    description: str
    model_type: str | None

    @abstractmethod
    def modules(self) -> list[str]:
        """Every module with a 2-D weight (in storage order), kept or not."""

    @abstractmethod
    def shape(self, module: str) -> tuple[int, int]: ...

    @abstractmethod
    def dtype(self, module: str) -> str: ...

    @abstractmethod
    def take(self, module: str) -> Tensor:
        """The module's weight in float32. In-memory sources release it afterwards."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        pass


class SafetensorsWeights(WeightSource):
    """A model directory read lazily through the safetensors headers and memory maps."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.description = str(self.directory)
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.directory} holds no *.safetensors weights")
        self._handles = [safe_open(f, framework="pt") for f in files]
        self._where: dict[str, int] = {}
        self._info: dict[str, tuple[tuple[int, int], str]] = {}
        for i, h in enumerate(self._handles):
            for key in h.keys():  # noqa: SIM118 (safe_open is not a mapping)
                module = module_of(key)
                if module is None:
                    continue
                sl = h.get_slice(key)
                shape = tuple(sl.get_shape())
                if len(shape) == 2:
                    self._where[module] = i
                    self._info[module] = ((int(shape[0]), int(shape[1])), str(sl.get_dtype()))
        cfg_file = self.directory / "config.json"
        self.model_type = json.loads(cfg_file.read_text()).get("model_type") if cfg_file.is_file() else None

    def modules(self) -> list[str]:
        return list(self._where)

    def shape(self, module: str) -> tuple[int, int]:
        return self._info[module][0]

    def dtype(self, module: str) -> str:
        return self._info[module][1]

    def take(self, module: str) -> Tensor:
        return self._handles[self._where[module]].get_tensor(module + ".weight").to(torch.float32)

    def close(self) -> None:
        self._handles.clear()


class LoadedWeights(WeightSource):
    """A model loaded through :mod:`safeft.models`; keeps only the ``keep`` modules' weights."""

    def __init__(self, name: str, keep: Keep, trust_remote_code: bool = False):
        from safeft.models import load_model, resolve_model

        source = resolve_model(name)
        self.description = source.describe()
        log.info("loading %s into memory (not a safetensors directory, cannot stream)", self.description)
        model = load_model(source, dtype=torch.float32, trust_remote_code=trust_remote_code)
        self.model_type = getattr(model.config, "model_type", None)
        self._shapes: dict[str, tuple[int, int]] = {}
        self._dtypes: dict[str, str] = {}
        self._kept: dict[str, Tensor] = {}
        for key, tensor in model.state_dict().items():
            module = module_of(key)
            if module is None or tensor.ndim != 2:
                continue
            self._shapes[module] = (int(tensor.shape[0]), int(tensor.shape[1]))
            self._dtypes[module] = str(tensor.dtype).replace("torch.", "")
            if keep(module):
                self._kept[module] = tensor.detach()
        del model  # everything not kept is freed here

    def modules(self) -> list[str]:
        return list(self._shapes)

    def shape(self, module: str) -> tuple[int, int]:
        return self._shapes[module]

    def dtype(self, module: str) -> str:
        return self._dtypes[module]

    def take(self, module: str) -> Tensor:
        if module not in self._kept:
            raise KeyError(f"{module} was not kept when {self.description} was loaded")
        return self._kept.pop(module).to(torch.float32)

    def close(self) -> None:
        self._kept.clear()


def can_stream(name: str) -> bool:
    """Whether ``name`` is a local model directory whose weights are safetensors files."""
    from safeft.models import resolve_model

    source = resolve_model(name)
    return source.kind == "directory" and any(Path(source.path).glob("*.safetensors"))


def open_weights(name: str, keep: Keep, trust_remote_code: bool = False) -> WeightSource:
    """Stream ``name`` when it is a safetensors directory, else load it keeping only ``keep``."""
    from safeft.models import resolve_model

    if can_stream(name):
        return SafetensorsWeights(resolve_model(name).path)
    return LoadedWeights(name, keep, trust_remote_code)
