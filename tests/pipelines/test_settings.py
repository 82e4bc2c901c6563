from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.settings import PROJECT_ROOT, Settings, load_settings


def test_defaults_come_from_the_yaml_file() -> None:
    s = load_settings()
    assert s.models.llm == "smollm2-135m-instruct"
    assert s.models.embedding == "all-minilm-l6-v2"
    assert s.serve.host == "127.0.0.1" and s.serve.port == 8000


def test_relative_data_dir_is_anchored_at_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMPETUS_DATA_DIR", raising=False)
    s = Settings()
    assert s.data_dir == PROJECT_ROOT / "data" / "state"
    assert s.models_dir == s.data_dir / "models"


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMPETUS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IMPETUS_SERVE__PORT", "8123")
    monkeypatch.setenv("IMPETUS_EMBEDDING__BACKEND", "mlx")
    s = Settings()
    assert s.data_dir == tmp_path
    assert s.serve.port == 8123
    assert s.embedding.backend == "mlx"


def test_another_config_file_and_typos_are_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "impetus.yaml"
    cfg.write_text("serve:\n  port: 9001\n")
    monkeypatch.setenv("IMPETUS_CONFIG", str(cfg))
    assert Settings().serve.port == 9001

    cfg.write_text("serve:\n  prot: 9001\n")
    with pytest.raises(ValidationError, match="prot"):
        Settings()


def test_bad_values_fail_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPETUS_EMBEDDING__BACKEND", "tpu")
    with pytest.raises(ValidationError, match="backend"):
        Settings()
