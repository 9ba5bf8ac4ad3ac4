"""Weight sources: a GGUF file or a transformers checkpoint directory, read through one interface."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tfb.gguf.reader import MetaValue, TensorInfo


class WeightSource(Protocol):
    """What the config rules, the loader and `tfb check` read: GGUF metadata keys and tensor names."""

    path: Path

    @property
    def metadata(self) -> Mapping[str, MetaValue]: ...

    @property
    def tensors(self) -> Mapping[str, TensorInfo]: ...

    @property
    def architecture(self) -> str | None: ...

    def tensor_data(self, name: str) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


def open_source(path: str | Path, spec_dirs: Iterable[str | Path] = ()) -> WeightSource:
    """A directory is a checkpoint (config.json + *.safetensors); anything else a GGUF file."""
    if Path(path).is_dir():
        from tfb.sources.checkpoint import CheckpointSource

        return CheckpointSource(path, tuple(spec_dirs))
    from tfb.gguf.reader import GGUFFile

    return GGUFFile(path)
