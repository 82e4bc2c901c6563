"""The embedding encoder on Core ML (the Apple Neural Engine), behind the same `Embedder` protocol.

Conversion turns a sentence-transformers BERT folder into one float16 ML program per sequence
bucket (128 and 512 tokens by default, capped at the model's max_seq_length), built with the MIL
builder in the ANE layout of `pipelines.embed.ane_layout` from the folder's safetensors (numpy;
no torch). Packages are cached in the model store, keyed by the weights' hash:

    data_dir/models/coreml/<name>-<sha256(model.safetensors)[:16]>/
        manifest.json            what was converted, from what, with which settings
        seq128.mlpackage         inputs input_ids, attention_mask (int32, (1, 128)); output embedding
        seq256.mlpackage         (all-MiniLM-L6-v2 stops at 256 tokens, so 512 becomes 256)

    uv run impetus models convert-coreml all-minilm-l6-v2     # or on first use of the backend

Conversion runs anywhere coremltools installs (its Linux wheel converts and saves without
loading); `CoreMLBertEmbedder` predicts on macOS only. Each text goes to the smallest bucket that
holds it, padded with an attention mask; texts of a bucket go to Core ML as one batch prediction.

Why one package per bucket rather than a multifunction package: multifunction models need a
macOS 15 deployment target and their only gain here is sharing ~45 MB of float16 weights on
disk; per-bucket packages load on macOS 13 and later, compile and load independently, and each
is a plain fixed-shape program (the shapes the ANE compiler handles best).

Threading: the embedder owns its MLModel objects and shares nothing with the LLM engine, so
embedding (ANE) and decode (GPU, the engine's own thread) can run at the same time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.embed.base import Backend, EmbedderLoadError
from pipelines.embed.bert_folder import BertEmbedderBase, BertFolder, BertTokenizer

if TYPE_CHECKING:
    from tokenizers import Encoding

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = (128, 512)
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DEPLOYMENT_TARGET = "macOS13"  # fp16 ML programs with the iOS16 opset; Ventura and later
Progress = Callable[[str, int, int], None]


def import_coremltools() -> Any:
    """coremltools, without its warnings about the missing macOS runtime on other hosts."""
    quiet = sys.platform != "darwin" and "coremltools" not in sys.modules
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    if quiet:  # "Failed to load _MLModelProxy ...": expected where Core ML cannot run
        ct_logger.setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError as e:
        raise EmbedderLoadError(
            "coremltools is not installed; it converts and runs models for Core ML "
            "(it is in the project's dev group: `uv sync`)"
        ) from e
    finally:
        if quiet:
            ct_logger.setLevel(level)
    return coremltools


# --- cache keys -------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(folder: Path) -> str:
    """sha256 of the folder's model.safetensors (memoised per size and mtime in this process)."""
    path = Path(folder) / "model.safetensors"
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


def cache_dir(models_dir: Path, name: str, digest: str) -> Path:
    """Where the packages converted from weights `digest` of model `name` live."""
    return Path(models_dir) / "coreml" / f"{name}-{digest[:16]}"


def plan_buckets(buckets: Sequence[int], max_seq_length: int) -> tuple[int, ...]:
    """Sorted distinct bucket lengths, each capped at max_seq_length."""
    if not buckets or any(int(b) < 1 for b in buckets):
        raise ValueError(f"buckets must be positive sequence lengths, got {list(buckets)}")
    return tuple(sorted({min(int(b), max_seq_length) for b in buckets}))


def package_name(seq_len: int) -> str:
    return f"seq{seq_len}.mlpackage"


# --- conversion -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoreMLPackages:
    """Converted packages for one model: where they are and what they hold."""

    path: Path  # the cache folder (manifest.json and one .mlpackage per bucket)
    buckets: tuple[int, ...]
    dim: int
    cached: bool  # True when an earlier conversion was reused
    seconds: float

    def package(self, seq_len: int) -> Path:
        return self.path / package_name(seq_len)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _mlmodel(weights: dict[str, np.ndarray], spec: Any, seq_len: int, meta: dict[str, str]) -> Any:
    ct = import_coremltools()
    from pipelines.embed.ane_layout import OUTPUT, build_program

    prog = build_program(weights, spec, seq_len)
    # coremltools logs every removed op at INFO and draws tqdm bars for its ~100 graph passes on
    # stderr; our own progress bar says what is happening.
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    ct_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            model = ct.convert(
                prog,
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16,
                compute_units=ct.ComputeUnit.ALL,
                minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                # Never load here: only macOS can, and CoreMLBertEmbedder loads the saved
                # package anyway (loading now would compile it twice).
                skip_model_load=True,
            )
    finally:
        ct_logger.setLevel(level)
    model.short_description = (
        f"{meta['impetus.model']}: sentence embedding, {seq_len}-token bucket, ANE layout"
    )
    model.input_description["input_ids"] = f"token ids, right-padded to {seq_len}"
    model.input_description["attention_mask"] = "1 for tokens, 0 for padding"
    model.output_description[OUTPUT] = "pooled embedding (normalised if the model normalises)"
    model.user_defined_metadata.update({**meta, "impetus.seq_len": str(seq_len)})
    return model


def convert_to_coreml(
    folder: Path,
    out_dir: Path,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    *,
    name: str | None = None,
    on_progress: Progress | None = None,
) -> CoreMLPackages:
    """Convert a sentence-transformers BERT folder into `out_dir` (replaced atomically).

    Everything is written into a temporary sibling folder and renamed into place at the end, so
    `out_dir` is either the previous complete conversion or the new one, never a partial one.
    """
    from pipelines.embed.ane_layout import EncoderSpec, load_weights

    ct = import_coremltools()
    start = time.perf_counter()
    bert = BertFolder.read(folder)
    name = name or bert.path.name
    plan = plan_buckets(buckets, bert.max_seq_length)
    spec = EncoderSpec.from_folder(bert)
    digest = weights_sha256(bert.path)
    out_dir = Path(out_dir)
    label = f"{name} (coreml)"
    total = len(plan) + 1
    if on_progress:
        on_progress(label, 0, total)
    weights = load_weights(bert.weights)
    if on_progress:
        on_progress(label, 1, total)
    meta = {
        "impetus.model": name,
        "impetus.weights_sha256": digest,
        "impetus.layout": "ane-bc1s",
        "impetus.pooling": ",".join(spec.pooling),
        "impetus.normalize": str(spec.normalize).lower(),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as the model store
    try:
        for i, seq_len in enumerate(plan):
            logger.info("coreml.convert %s: %d-token bucket", name, seq_len)
            _mlmodel(weights, spec, seq_len, meta).save(str(tmp / package_name(seq_len)))
            if on_progress:
                on_progress(label, i + 2, total)
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "source": str(bert.path),
            "weights_sha256": digest,
            "buckets": list(plan),
            "packages": {str(s): package_name(s) for s in plan},
            "dim": spec.dim,
            "max_seq_length": bert.max_seq_length,
            "pooling": list(spec.pooling),
            "normalize": spec.normalize,
            "precision": "float16",
            "compute_units": "ALL",
            "minimum_deployment_target": DEPLOYMENT_TARGET,
            "layout": "ane-bc1s",
            "coremltools": ct.__version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CoreMLPackages(
        path=out_dir,
        buckets=plan,
        dim=spec.dim,
        cached=False,
        seconds=time.perf_counter() - start,
    )


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing `target` is swapped out first, then deleted."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        if old is not None and not target.exists():
            os.replace(old, target)  # put the previous conversion back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_coreml(
    folder: Path,
    models_dir: Path,
    name: str,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    *,
    force: bool = False,
    on_progress: Progress | None = None,
) -> CoreMLPackages:
    """The cached conversion of `folder` for these buckets, converting only when it is missing."""
    start = time.perf_counter()
    bert = BertFolder.read(folder)
    plan = plan_buckets(buckets, bert.max_seq_length)
    digest = weights_sha256(bert.path)
    out_dir = cache_dir(models_dir, name, digest)
    manifest = read_manifest(out_dir)
    if not force and _manifest_matches(manifest, out_dir, digest, plan):
        assert manifest is not None
        return CoreMLPackages(
            path=out_dir,
            buckets=plan,
            dim=int(manifest["dim"]),
            cached=True,
            seconds=time.perf_counter() - start,
        )
    return convert_to_coreml(bert.path, out_dir, plan, name=name, on_progress=on_progress)


def _manifest_matches(
    manifest: dict[str, Any] | None, out_dir: Path, digest: str, plan: tuple[int, ...]
) -> bool:
    return (
        manifest is not None
        and manifest.get("format") == MANIFEST_FORMAT
        and manifest.get("weights_sha256") == digest
        and tuple(manifest.get("buckets", ())) == plan
        and all((out_dir / package_name(s) / "Manifest.json").is_file() for s in plan)
    )


# --- the embedder -----------------------------------------------------------------------------


def coreml_runtime_error() -> str | None:
    """Why Core ML cannot predict in this process, or None when it can."""
    if sys.platform != "darwin":
        return f"Core ML runs models only on macOS (this host is {sys.platform})"
    try:
        import_coremltools()
    except EmbedderLoadError as e:
        return str(e)
    return None


class CoreMLBertEmbedder(BertEmbedderBase):
    """`Embedder` for sentence-transformers BERT folders, run by Core ML (ANE, GPU or CPU)."""

    backend: Backend = "coreml"

    def __init__(
        self,
        *,
        name: str,
        models: dict[int, Any],
        tokenizer: BertTokenizer,
        dim: int,
        normalize: bool,
        package_dir: Path | None = None,
    ):
        if not models:
            raise ValueError("at least one bucket model is needed")
        self.name = name
        self.dim = dim
        self.normalize = normalize
        if tokenizer.max_seq_length > max(models):
            raise ValueError("the tokenizer truncates past the largest bucket")
        self.max_seq_length = tokenizer.max_seq_length
        self.buckets = tuple(sorted(models))
        self.package_dir = package_dir
        self._models = models
        self._tokenizer = tokenizer

    @classmethod
    def from_folder(
        cls,
        path: Path,
        *,
        models_dir: Path,
        name: str | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        convert: bool = True,
        on_progress: Progress | None = None,
    ) -> CoreMLBertEmbedder:
        """Load (converting first if `convert` and not cached) the Core ML packages of a folder."""
        if reason := coreml_runtime_error():
            raise EmbedderLoadError(reason)
        ct = import_coremltools()

        bert = BertFolder.read(path)
        name = name or bert.path.name
        if not convert:
            digest = weights_sha256(bert.path)
            plan = plan_buckets(buckets, bert.max_seq_length)
            out = cache_dir(models_dir, name, digest)
            if not _manifest_matches(read_manifest(out), out, digest, plan):
                raise EmbedderLoadError(
                    f"{name} has no Core ML conversion for these weights in {out.parent}; run "
                    f"`impetus models convert-coreml {name}`"
                )
        packages = ensure_coreml(bert.path, models_dir, name, buckets, on_progress=on_progress)
        models = {}
        for seq_len in packages.buckets:
            try:
                models[seq_len] = ct.models.MLModel(
                    str(packages.package(seq_len)), compute_units=ct.ComputeUnit.ALL
                )
            except Exception as e:  # Core ML reports compile/load failures as assorted errors
                raise EmbedderLoadError(
                    f"Core ML could not load {packages.package(seq_len)}: {e}"
                ) from e
        return cls(
            name=name,
            models=models,
            tokenizer=BertTokenizer(
                bert.load_tokenizer(),
                # Buckets below the model's limit (a user's choice) lower the truncation length.
                max_seq_length=min(bert.max_seq_length, packages.buckets[-1]),
                do_lower_case=bert.do_lower_case,
            ),
            dim=packages.dim,
            normalize=bert.normalize,
            package_dir=packages.path,
        )

    # -- model -------------------------------------------------------------------------------

    def bucket_for(self, n_tokens: int) -> int:
        """The smallest bucket that holds `n_tokens` (texts are truncated to the largest)."""
        return next((b for b in self.buckets if b >= n_tokens), self.buckets[-1])

    def _feeds(self, ids: Sequence[int], seq_len: int) -> dict[str, np.ndarray]:
        n = len(ids)  # <= seq_len: the tokenizer truncates to the largest bucket
        input_ids = np.full((1, seq_len), self._tokenizer.pad_id, dtype=np.int32)
        mask = np.zeros((1, seq_len), dtype=np.int32)
        input_ids[0, :n] = ids[:n]
        mask[0, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def _encode_into(self, vectors: np.ndarray, encodings: list[Encoding], batch_size: int) -> None:
        by_bucket: dict[int, list[int]] = {}
        for i, e in enumerate(encodings):
            by_bucket.setdefault(self.bucket_for(len(e.ids)), []).append(i)
        for seq_len, idx in by_bucket.items():
            model = self._models[seq_len]
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                feeds = [self._feeds(encodings[i].ids, seq_len) for i in chunk]
                outputs = model.predict(feeds)  # one Core ML batch prediction
                for i, out in zip(chunk, outputs, strict=True):
                    vectors[i] = np.asarray(out["embedding"], dtype=np.float32).reshape(-1)
        if self.normalize:
            # The package normalises in float16; renormalising in float32 makes norms exactly 1.
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
