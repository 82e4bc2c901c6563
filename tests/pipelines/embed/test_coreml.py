"""The Core ML embedding backend: conversion, cache, dispatch, and the ANE-layout numerics.

Core ML cannot run a model off macOS, so here the packages are converted and saved (coremltools'
Linux wheel, `skip_model_load`), their specs are read back, and the saved ML program itself is
evaluated by a small numpy interpreter of its MIL ops (float16 values rounded after every op as
the package stores them) and compared with the MLX encoder and sentence-transformers' vectors.
What only a Mac can check (Core ML's own numerics on the ANE, and its speed) is
`test_coreml_matches_mlx_on_macos`, skipped elsewhere.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from pipelines.embed.base import Embedder, EmbedderLoadError
from pipelines.embed.coreml_bert import (
    CoreMLBertEmbedder,
    cache_dir,
    coreml_runtime_error,
    ensure_coreml,
    import_coremltools,
    plan_buckets,
    weights_sha256,
)
from pipelines.embed.dispatch import choose_backend, describe_embedding_backend, load_embedder
from pipelines.embed.mlx_bert import BUNDLED_MINILM_NAME, MLXBertEmbedder, bundled_minilm_folder
from pipelines.hardware import HardwareInfo, detect
from pipelines.settings import Settings, load_settings

REFERENCE = Path(__file__).parents[2] / "fixtures" / "minilm_reference" / "reference.json"
MINILM = "all-minilm-l6-v2"  # registry name of the bundled model
ON_MACOS = sys.platform == "darwin"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- a numpy interpreter of the MIL ops the ANE-layout program uses --------------------------


def _gelu(x: np.ndarray, mode: str) -> np.ndarray:
    if mode == "EXACT":
        import mlx.core as mx

        return 0.5 * x * (1.0 + np.asarray(mx.erf(mx.array(x / np.sqrt(2.0)))))
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _slice(x: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    index = []
    end_mask = a.get("end_mask")
    for d in range(x.ndim):
        end = None if end_mask is not None and end_mask[d] else int(a["end"][d])
        index.append(slice(int(a["begin"][d]), end))
    return x[tuple(index)]


def _conv(a: dict[str, Any]) -> np.ndarray:
    w = a["weight"]
    assert w.shape[2:] == (1, 1), "only 1x1 convolutions are expected"
    x = a["x"]
    assert x.shape[0] == 1 and x.shape[2] == 1, "(1, C, 1, S) inputs are expected"
    out = np.ascontiguousarray(w[:, :, 0, 0]) @ np.ascontiguousarray(x[0, :, 0, :])
    if a.get("bias") is not None:
        out = out + a["bias"][:, None]
    return out[None, :, None, :]


def _einsum(equation: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # The one form MIL's einsum has: (n, c, h, w) x (n, w, h, u) -> (n, c, h, u), as a matmul.
    assert equation.replace(" ", "") == "nchw,nwhu->nchu", equation
    if x.shape[0] == y.shape[0] == 1 and x.shape[2] == y.shape[2] == 1:  # the B=1, H=1 case
        out = np.ascontiguousarray(x[0, :, 0, :]) @ np.ascontiguousarray(y[0, :, 0, :])
        return out[None, :, None, :]
    return np.matmul(x.transpose(0, 2, 1, 3), y.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)


_CASTS = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32}
_OPS: dict[str, Callable[[dict[str, Any]], np.ndarray]] = {
    "cast": lambda a: a["x"].astype(_CASTS[str(a["dtype"])]),
    "add": lambda a: a["x"] + a["y"],
    "sub": lambda a: a["x"] - a["y"],
    "mul": lambda a: a["x"] * a["y"],
    "real_div": lambda a: a["x"] / a["y"],
    "maximum": lambda a: np.maximum(a["x"], a["y"]),
    "rsqrt": lambda a: 1.0 / np.sqrt(a["x"] + a.get("epsilon", 1e-12)),
    "sqrt": lambda a: np.sqrt(a["x"]),
    "relu": lambda a: np.maximum(a["x"], 0),
    "reshape": lambda a: a["x"].reshape([int(s) for s in a["shape"]]),
    "transpose": lambda a: a["x"].transpose([int(p) for p in a["perm"]]),
    "expand_dims": lambda a: np.expand_dims(a["x"], tuple(int(i) for i in a["axes"])),
    "gather": lambda a: np.take(a["x"], a["indices"].astype(np.int64), axis=int(a["axis"])),
    "conv": _conv,
    "einsum": lambda a: _einsum(str(a["equation"]), *a["values"]),
    "softmax": lambda a: _softmax(a["x"], int(a["axis"])),
    "gelu": lambda a: _gelu(a["x"], str(a.get("mode", "EXACT"))),
    "concat": lambda a: np.concatenate(a["values"], axis=int(a["axis"])),
    "reduce_sum": lambda a: a["x"].sum(axis=tuple(a["axes"]), keepdims=bool(a["keep_dims"])),
    "reduce_max": lambda a: a["x"].max(axis=tuple(a["axes"]), keepdims=bool(a["keep_dims"])),
    "slice_by_index": lambda a: _slice(a["x"], a),
}


def _layer_norm(a: dict[str, Any]) -> np.ndarray:
    axes = tuple(int(i) for i in a["axes"])
    x = a["x"]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = [1] * x.ndim
    for ax in axes:
        shape[ax] = x.shape[ax]
    return (x - mean) / np.sqrt(var + a["epsilon"]) * a["gamma"].reshape(shape) + a["beta"].reshape(
        shape
    )


_OPS["layer_norm"] = _layer_norm


def _split(op_inputs: dict[str, Any]) -> list[np.ndarray]:
    x, axis = op_inputs["x"], int(op_inputs["axis"])
    if op_inputs.get("num_splits") is not None:
        return np.split(x, int(op_inputs["num_splits"]), axis=axis)
    return np.split(x, np.cumsum(op_inputs["split_sizes"])[:-1], axis=axis)


def run_mil_program(program: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate the `main` function of a MIL program in numpy: float32 arithmetic, and every
    float16 result rounded to float16, as the ML program stores it between ops."""
    from coremltools.converters.mil.mil import types

    fn = program.functions["main"]
    env: dict[str, Any] = {var.name: feeds[name] for name, var in fn.inputs.items()}

    def value(v: Any) -> Any:
        if isinstance(v, list | tuple):
            return [value(u) for u in v]
        out = env.get(v.name, v.val)
        if isinstance(out, np.ndarray) and out.dtype == np.float16:
            out = out.astype(np.float32)
        return out

    for op in fn.operations:
        if op.op_type == "const":
            env[op.outputs[0].name] = op.outputs[0].val
            continue
        args = {k: value(v) for k, v in op.inputs.items()}
        if op.op_type == "split":
            results = _split(args)
        elif op.op_type in _OPS:
            results = [np.asarray(_OPS[op.op_type](args))]
        else:
            raise NotImplementedError(f"MIL op {op.op_type} is not interpreted")
        for var, result in zip(op.outputs, results, strict=True):
            if var.dtype == types.fp16:
                result = result.astype(np.float16).astype(np.float32)
            env[var.name] = result
    return {var.name: np.asarray(env[var.name], dtype=np.float32) for var in fn.outputs}


def load_saved_program(package: Path) -> Any:
    """The MIL program stored in a saved .mlpackage (after coremltools' passes, float16)."""
    from coremltools.converters.mil.frontend.milproto.load import load

    spec = import_coremltools().utils.load_spec(str(package))
    weights = package / "Data" / "com.apple.CoreML" / "weights"
    return load(spec, spec.specificationVersion, file_weights_dir=str(weights))


def embed_with_program(
    programs: dict[int, Any], embedder: MLXBertEmbedder, texts: list[str]
) -> np.ndarray:
    """Embed like CoreMLBertEmbedder.encode, with the interpreter in place of Core ML."""
    buckets = sorted(programs)
    encodings = embedder._tokenizer.encode_truncated(texts)
    out = []
    for e in encodings:
        seq = next(b for b in buckets if b >= len(e.ids))
        ids = np.zeros((1, seq), np.int32)
        mask = np.zeros((1, seq), np.int32)
        ids[0, : len(e.ids)] = e.ids
        mask[0, : len(e.ids)] = 1
        result = run_mil_program(programs[seq], {"input_ids": ids, "attention_mask": mask})
        out.append(result["embedding"][0])
    return np.stack(out)


# --- fixtures ---------------------------------------------------------------------------------


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT with MiniLM's tokenizer and pooling (converts in seconds)."""
    from safetensors.numpy import save_file

    src = bundled_minilm_folder()
    folder.mkdir(parents=True)
    for name in ("tokenizer.json", "modules.json", "sentence_bert_config.json"):
        shutil.copy(src / name, folder / name)
    shutil.copytree(src / "1_Pooling", folder / "1_Pooling")
    c, layers, ff, vocab, positions = 32, 2, 64, 30522, 512
    config = {
        "model_type": "bert",
        "hidden_size": c,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": ff,
        "max_position_embeddings": positions,
        "vocab_size": vocab,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
    }
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": r(vocab, c, scale=0.5),
        "embeddings.position_embeddings.weight": r(positions, c, scale=0.5),
        "embeddings.token_type_embeddings.weight": r(2, c, scale=0.5),
        "embeddings.LayerNorm.weight": 1 + r(c),
        "embeddings.LayerNorm.bias": r(c),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for proj in ("query", "key", "value"):
            w[f"{p}.attention.self.{proj}.weight"] = r(c, c, scale=0.3)
            w[f"{p}.attention.self.{proj}.bias"] = r(c)
        w[f"{p}.attention.output.dense.weight"] = r(c, c, scale=0.3)
        w[f"{p}.attention.output.dense.bias"] = r(c)
        w[f"{p}.intermediate.dense.weight"] = r(ff, c, scale=0.3)
        w[f"{p}.intermediate.dense.bias"] = r(ff)
        w[f"{p}.output.dense.weight"] = r(c, ff, scale=0.3)
        w[f"{p}.output.dense.bias"] = r(c)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{ln}.weight"] = 1 + r(c)
            w[f"{p}.{ln}.bias"] = r(c)
    save_file(w, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def texts(reference: dict[str, Any]) -> list[str]:
    return [item["text"] for item in reference["items"]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture(scope="module")
def minilm_packages(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """all-MiniLM-L6-v2 converted once for the module (about a minute on a shared CPU)."""
    models_dir = tmp_path_factory.mktemp("models")
    return ensure_coreml(bundled_minilm_folder(), models_dir, MINILM)


# --- conversion and cache ---------------------------------------------------------------------


def test_plan_buckets_caps_at_max_seq_length() -> None:
    assert plan_buckets((128, 512), 256) == (128, 256)
    assert plan_buckets((512, 128, 128), 512) == (128, 512)
    assert plan_buckets((64,), 256) == (64,)
    with pytest.raises(ValueError):
        plan_buckets((), 256)


@pytest.mark.slow
def test_tiny_conversion_is_cached_by_weights(tiny: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    first = ensure_coreml(tiny, models_dir, "tiny-bert", (16, 600))
    assert not first.cached
    assert first.buckets == (16, 256)  # capped at the folder's max_seq_length
    assert first.path == models_dir / "coreml" / f"tiny-bert-{weights_sha256(tiny)[:16]}"
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["weights_sha256"] == weights_sha256(tiny)
    assert manifest["buckets"] == [16, 256]
    assert manifest["precision"] == "float16"
    stamp = (first.path / "manifest.json").stat().st_mtime_ns

    second = ensure_coreml(tiny, models_dir, "tiny-bert", (16, 600))
    assert second.cached and second.path == first.path
    assert (first.path / "manifest.json").stat().st_mtime_ns == stamp  # nothing rewritten
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")]  # no leftovers

    # Other weights, other key: the old conversion stays, a new one is made next to it.
    changed = make_tiny_bert(tmp_path / "tiny-bert", seed=1)
    assert weights_sha256(changed) != weights_sha256(tiny)
    third = ensure_coreml(changed, models_dir, "tiny-bert", (16,))
    assert not third.cached
    assert third.path == cache_dir(models_dir, "tiny-bert", weights_sha256(changed))
    assert third.path != first.path and first.path.is_dir()

    # Other buckets for the same weights replace the conversion in place.
    fourth = ensure_coreml(changed, models_dir, "tiny-bert", (16, 32))
    assert not fourth.cached and fourth.path == third.path
    assert sorted(p.name for p in fourth.path.glob("*.mlpackage")) == [
        "seq16.mlpackage",
        "seq32.mlpackage",
    ]


def test_tiny_mil_program_matches_mlx(tiny: Path, texts: list[str]) -> None:
    """The ANE layout (BC1S, 1x1 convs, per-head einsums, channel layer norm) is the same math."""
    from pipelines.embed.ane_layout import EncoderSpec, build_program, load_weights
    from pipelines.embed.bert_folder import BertFolder

    folder = BertFolder.read(tiny)
    spec = EncoderSpec.from_folder(folder)
    weights = load_weights(folder.weights)
    mlx = MLXBertEmbedder.from_folder(tiny)
    sample = texts[:12]
    programs = {s: build_program(weights, spec, s) for s in (32, 512)}
    got = embed_with_program(programs, mlx, sample)
    want = mlx.encode(sample).vectors
    assert cosine(got, want).min() >= 0.9999


class ProgramModel:
    """Stands in for `coremltools.models.MLModel` where Core ML cannot run: predicts with the
    numpy interpreter of the same MIL program (batch prediction: a list of feed dicts)."""

    def __init__(self, program: Any):
        self.program = program
        self.calls: list[int] = []

    def predict(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        assert isinstance(feeds, list)
        self.calls.append(len(feeds))
        return [run_mil_program(self.program, f) for f in feeds]


def test_coreml_embedder_encode_with_program_models(tiny: Path, texts: list[str]) -> None:
    """Bucketing, padding, masks, batching and order of CoreMLBertEmbedder.encode, with the
    tiny model's MIL programs standing in for Core ML, against the MLX encoder."""
    from pipelines.embed.ane_layout import EncoderSpec, build_program, load_weights
    from pipelines.embed.bert_folder import BertFolder, BertTokenizer

    folder = BertFolder.read(tiny)
    spec = EncoderSpec.from_folder(folder)
    weights = load_weights(folder.weights)
    models = {s: ProgramModel(build_program(weights, spec, s)) for s in (16, 256)}
    tokenizer = BertTokenizer(folder.load_tokenizer(), max_seq_length=256, do_lower_case=False)
    coreml = CoreMLBertEmbedder(
        name="tiny-bert", models=models, tokenizer=tokenizer, dim=spec.dim, normalize=True
    )
    mlx = MLXBertEmbedder.from_folder(tiny, name="tiny-bert")
    assert isinstance(coreml, Embedder) and coreml.backend == "coreml"
    assert coreml.bucket_for(3) == 16 and coreml.bucket_for(17) == 256
    assert coreml.bucket_for(999) == 256

    got = coreml.encode(texts, batch_size=4)
    want = mlx.encode(texts)
    assert got.token_counts == want.token_counts
    assert got.truncated == want.truncated and sum(got.truncated) >= 3
    assert cosine(got.vectors, want.vectors).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-6)
    short = sum(1 for n in got.token_counts if n <= 16)
    assert sum(models[16].calls) == short and max(models[16].calls) <= 4
    assert sum(models[256].calls) == len(texts) - short
    assert coreml.encode([]).vectors.shape == (0, spec.dim)
    assert coreml.count_tokens(["hello world"]) == mlx.count_tokens(["hello world"])
    with pytest.raises(TypeError):
        coreml.encode("one string")  # type: ignore[arg-type]


@pytest.mark.slow
def test_package_spec_inputs_outputs_precision(minilm_packages: Any) -> None:
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    assert minilm_packages.buckets == (128, 256)  # 512 capped at MiniLM's 256
    assert minilm_packages.dim == 384
    for seq in minilm_packages.buckets:
        package = minilm_packages.package(seq)
        manifest = json.loads((package / "Manifest.json").read_text())
        paths = {e["path"] for e in manifest["itemInfoEntries"].values()}
        assert "com.apple.CoreML/model.mlmodel" in paths
        spec = import_coremltools().utils.load_spec(str(package))
        assert spec.WhichOneof("Type") == "mlProgram"
        assert spec.specificationVersion >= 7  # macOS 13 / iOS 16
        inputs = {i.name: i.type.multiArrayType for i in spec.description.input}
        assert list(inputs) == ["input_ids", "attention_mask"]
        for arr in inputs.values():
            assert list(arr.shape) == [1, seq]
            assert arr.dataType == FeatureTypes_pb2.ArrayFeatureType.INT32
        (output,) = spec.description.output
        assert output.name == "embedding"
        assert list(output.type.multiArrayType.shape) == [1, 384]
        meta = spec.description.metadata.userDefined
        assert meta["impetus.seq_len"] == str(seq)
        assert meta["impetus.layout"] == "ane-bc1s"

        # float16: every float weight is stored as fp16, and the compute ops run in fp16.
        fn = spec.mlProgram.functions["main"]
        block = fn.block_specializations[fn.opset]
        float_consts: dict[int, int] = {}
        op_types: dict[str, int] = {}
        for op in block.operations:
            op_types[op.type] = op_types.get(op.type, 0) + 1
            if op.type == "const":
                tensor = op.outputs[0].type.tensorType
                if tensor.dataType in (MIL_pb2.FLOAT16, MIL_pb2.FLOAT32):
                    float_consts[tensor.dataType] = float_consts.get(tensor.dataType, 0) + 1
            if op.type in ("conv", "layer_norm", "softmax", "einsum", "gelu"):
                assert op.outputs[0].type.tensorType.dataType == MIL_pb2.FLOAT16, op.type
        assert float_consts.get(MIL_pb2.FLOAT16, 0) > 100
        assert float_consts.get(MIL_pb2.FLOAT32, 0) == 0
        # The ANE layout: 1x1 convs for the 6 linears of each layer, per-head attention.
        assert op_types["conv"] == 6 * 6
        assert op_types["einsum"] == 6 * 12 * 2
        assert op_types["softmax"] == 6 * 12
        assert "matmul" not in op_types and "linear" not in op_types


@pytest.mark.slow
def test_saved_minilm_package_matches_mlx_numerically(
    minilm_packages: Any, texts: list[str], reference: dict[str, Any]
) -> None:
    """The saved float16 programs, evaluated op by op in numpy, against MLX (float32) and
    sentence-transformers: checks the ANE layout and float16 storage without Core ML."""
    mlx = MLXBertEmbedder.from_folder(bundled_minilm_folder(), name=BUNDLED_MINILM_NAME)
    programs = {s: load_saved_program(minilm_packages.package(s)) for s in minilm_packages.buckets}
    got = embed_with_program(programs, mlx, texts)
    got /= np.linalg.norm(got, axis=1, keepdims=True)  # as CoreMLBertEmbedder renormalises
    want_mlx = mlx.encode(texts).vectors
    want_st = np.array([item["vector"] for item in reference["items"]], dtype=np.float32)
    vs_mlx, vs_st = cosine(got, want_mlx), cosine(got, want_st)
    print(
        f"fp16 MIL vs MLX: min {vs_mlx.min():.6f} mean {vs_mlx.mean():.6f}; "
        f"vs sentence-transformers: min {vs_st.min():.6f} ({len(texts)} texts)"
    )
    assert len(texts) >= 20
    assert vs_mlx.min() >= 0.999
    assert vs_st.min() >= 0.999


# --- dispatch ---------------------------------------------------------------------------------


def _mac(hw: HardwareInfo) -> HardwareInfo:
    return replace(hw, os="Darwin", machine="arm64", apple_silicon=True, coreml_usable=True)


def _settings(settings: Settings, backend: str) -> Settings:
    return load_settings(data_dir=settings.data_dir, embedding={"backend": backend})


def test_auto_chooses_mlx_here(settings: Settings) -> None:
    if ON_MACOS:
        pytest.skip("this host can run Core ML")
    backend, reason = choose_backend(settings)
    assert backend == "mlx"
    assert "not usable" in reason
    embedder = load_embedder(settings)
    assert isinstance(embedder, Embedder)
    assert isinstance(embedder, MLXBertEmbedder) and embedder.backend == "mlx"
    info = describe_embedding_backend(settings, embedder)
    assert info["backend"] == "mlx" and info["requested"] == "auto" and not info["fallback"]


def test_auto_chooses_coreml_on_apple_silicon(settings: Settings) -> None:
    mac = _mac(detect())
    assert choose_backend(settings, mac)[0] == "coreml"
    assert choose_backend(_settings(settings, "mlx"), mac)[0] == "mlx"
    linux_arm = replace(detect(), os="Linux", machine="aarch64", apple_silicon=False)
    assert choose_backend(settings, replace(linux_arm, coreml_usable=False))[0] == "mlx"


def test_forced_coreml_falls_back_to_mlx_with_a_warning(settings: Settings) -> None:
    if ON_MACOS:
        pytest.skip("Core ML loads on this host")
    forced = _settings(settings, "coreml")
    with capture_logs() as logs:
        embedder = load_embedder(forced)
    assert embedder.backend == "mlx"
    (warning,) = [e for e in logs if e["event"] == "embedding.coreml.fallback"]
    assert warning["log_level"] == "warning"
    assert "only on macOS" in warning["reason"] and warning["using"] == "mlx"
    info = describe_embedding_backend(forced, embedder)
    assert info["backend"] == "mlx" and info["fallback"] and "macOS" in info["reason"]
    # Nothing was converted: the runtime check comes before any conversion work.
    assert not (forced.models_dir / "coreml").exists()


def test_auto_on_a_mac_without_core_ml_runtime_falls_back(settings: Settings) -> None:
    """What a Mac whose Core ML load fails sees: MLX, a warning, never an exception."""
    if ON_MACOS:
        pytest.skip("Core ML loads on this host")
    with capture_logs() as logs:
        embedder = load_embedder(settings, hardware=_mac(detect()))
    assert embedder.backend == "mlx"
    assert [e["event"] for e in logs].count("embedding.coreml.fallback") == 1
    assert describe_embedding_backend(settings, hardware=_mac(detect()))["backend"] == "mlx"


def test_coreml_embedder_refuses_to_load_off_macos(tiny: Path, tmp_path: Path) -> None:
    if ON_MACOS:
        pytest.skip("Core ML loads on this host")
    assert coreml_runtime_error() is not None
    with pytest.raises(EmbedderLoadError, match="only on macOS"):
        CoreMLBertEmbedder.from_folder(tiny, models_dir=tmp_path)


# --- macOS only: Core ML against MLX ----------------------------------------------------------


@pytest.mark.macos
@pytest.mark.slow
@pytest.mark.skipif(
    not (ON_MACOS and detect().apple_silicon and detect().coreml_usable),
    reason="Core ML predicts only on macOS on Apple Silicon; coremltools here converts but "
    "cannot load a model, so this parity and timing check runs on a Mac",
)
def test_coreml_matches_mlx_on_macos(tmp_path: Path, texts: list[str]) -> None:
    assert len(texts) >= 20
    start = time.perf_counter()
    coreml = CoreMLBertEmbedder.from_folder(
        bundled_minilm_folder(), models_dir=tmp_path / "models", name=MINILM
    )
    load_s = time.perf_counter() - start
    mlx = MLXBertEmbedder.from_folder(bundled_minilm_folder(), name=MINILM)
    coreml.encode(texts[:2]), mlx.encode(texts[:2])  # warm up (ANE compile, Metal kernels)

    start = time.perf_counter()
    got = coreml.encode(texts)
    coreml_s = time.perf_counter() - start
    start = time.perf_counter()
    want = mlx.encode(texts)
    mlx_s = time.perf_counter() - start
    start = time.perf_counter()
    for t in texts[:10]:
        coreml.encode([t])
    coreml_single_ms = (time.perf_counter() - start) / 10 * 1000

    sims = cosine(got.vectors, want.vectors)
    print(
        f"\nCore ML vs MLX on {len(texts)} texts: min cosine {sims.min():.5f}, mean "
        f"{sims.mean():.5f}; Core ML {coreml_s * 1000:.0f} ms (load+convert {load_s:.1f} s, "
        f"{coreml_single_ms:.1f} ms per single short text), MLX {mlx_s * 1000:.0f} ms"
    )
    assert coreml.backend == "coreml" and isinstance(coreml, Embedder)
    assert got.token_counts == want.token_counts
    assert got.truncated == want.truncated
    assert sims.min() >= 0.995
    np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
