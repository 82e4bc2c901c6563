"""`impetus models quantize` through mlx-lm's convert: names, the 16-bit step for a quantized
source, registration, and the errors a user can make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.models.quantize import derived_name, is_quantized
from pipelines.models.store import ModelStore, ModelStoreError


def test_names_follow_mlx_community_conventions() -> None:
    assert derived_name("m", 4) == "m-4bit"
    assert derived_name("m", 8, group_size=32) == "m-8bit-g32"
    assert derived_name("m", 16) == "m-fp16"
    assert derived_name("m", 16, "bfloat16") == "m-bf16"


def test_bad_requests_are_refused_with_a_reason(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match="use 4, 8 or 16"):
        store.quantize("smollm2-135m-instruct", 3)
    with pytest.raises(ModelStoreError, match="quantize takes an LLM"):
        store.quantize("all-minilm-l6-v2", 4)
    with pytest.raises(ModelStoreError, match="No model named 'nope'"):
        store.quantize("nope", 4)
    # A model whose files are gone (a built-in one would be imported on first use instead).
    store._register(
        "gone", kind="llm", fmt="mlx", source="gguf:/no/such.gguf", path=tmp_path / "gone"
    )
    with pytest.raises(ModelStoreError, match="import or pull it again"):
        store.quantize("gone", 4)


def test_a_quantized_source_goes_through_its_16_bit_model(
    tmp_path: Path, ready_models_dir: Path
) -> None:
    (tmp_path / "smollm2-135m-instruct").symlink_to(ready_models_dir / "smollm2-135m-instruct")
    store = ModelStore(tmp_path)
    entry = store.quantize("smollm2-135m-instruct", 8, group_size=32)
    assert entry.name == "smollm2-135m-instruct-8bit-g32" and entry.status == "ready"
    assert entry.source == "quantize:smollm2-135m-instruct:q8g32:float16"
    fp16 = store.get("smollm2-135m-instruct-fp16")  # made first, and registered
    assert fp16.status == "ready" and not is_quantized(Path(fp16.path))
    q = json.loads((Path(entry.path) / "config.json").read_text())["quantization"]
    assert (q["bits"], q["group_size"]) == (8, 32)
    assert (Path(entry.path) / "tokenizer.json").is_file()
    assert entry.size < fp16.size
    # Asking again returns the registered model without converting it again.
    mtime = Path(entry.path, "config.json").stat().st_mtime
    assert store.quantize("smollm2-135m-instruct", 8, group_size=32) == entry
    assert Path(entry.path, "config.json").stat().st_mtime == mtime
    assert not list(tmp_path.glob(".*.partial"))
