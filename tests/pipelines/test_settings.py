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


def test_a_bad_setting_is_one_line_with_key_value_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipelines.settings import SettingsError

    monkeypatch.setenv("IMPETUS_SERVE__PORT", "notaport")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == (
        "bad setting IMPETUS_SERVE__PORT=notaport: 'notaport' is not allowed; "
        "allowed: an integer >= 1 and <= 65535"
    )
    monkeypatch.delenv("IMPETUS_SERVE__PORT")
    monkeypatch.setenv("IMPETUS_RAG__SEARCH_MODE", "fuzzy")
    with pytest.raises(SettingsError, match=r"allowed: 'hybrid', 'dense', 'sparse'$"):
        load_settings()
    monkeypatch.delenv("IMPETUS_RAG__SEARCH_MODE")
    cfg = tmp_path / "impetus.yaml"
    cfg.write_text("serve:\n  prot: 9001\n")
    monkeypatch.setenv("IMPETUS_CONFIG", str(cfg))
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"unknown setting serve.prot in {cfg} (allowed keys here: host, port")
    assert "\n" not in message


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path: Path) -> None:
    import os
    import subprocess

    env = {**os.environ, "IMPETUS_SERVE__PORT": "notaport", "IMPETUS_DATA_DIR": str(tmp_path)}
    r = subprocess.run(["impetus", "models", "list"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "error: bad setting IMPETUS_SERVE__PORT=notaport: 'notaport' is not allowed; "
        "allowed: an integer >= 1 and <= 65535"
    ]
