"""Typed settings: `configs/impetus.yaml`, overridden by `IMPETUS_*` environment variables.

Build them once at the edge (`get_settings()`) and pass them down; nothing below the CLI, the app
factory or a flow reads the environment. Nested keys use a double underscore in the environment:
`IMPETUS_EMBEDDING__BATCH_SIZE=64` sets `embedding.batch_size`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "impetus.yaml"


class _Section(BaseModel):
    # A misspelt key in the YAML is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class ModelsSettings(_Section):
    """Which registry models the product uses by default."""

    llm: str = "smollm2-135m-instruct"
    embedding: str = "all-minilm-l6-v2"


class EmbeddingSettings(_Section):
    """How the embedding encoder runs."""

    backend: Literal["auto", "mlx", "coreml"] = "auto"
    batch_size: int = Field(32, ge=1, le=1024)


class ServeSettings(_Section):
    """Where `impetus serve` listens."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)


class LogSettings(_Section):
    """Structured logging: one line per event on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "console"


class Settings(BaseSettings):
    """Every setting of Impetus; see configs/impetus.yaml for what each one means."""

    model_config = SettingsConfigDict(
        env_prefix="IMPETUS_",
        env_nested_delimiter="__",
        extra="forbid",
        yaml_file=None,
    )

    data_dir: Path = Path("data/state")
    models: ModelsSettings = ModelsSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    serve: ServeSettings = ServeSettings()
    log: LogSettings = LogSettings()

    @field_validator("data_dir")
    @classmethod
    def _anchor_data_dir(cls, value: Path) -> Path:
        # A relative data_dir means "inside the checkout", wherever the command is run from.
        value = value.expanduser()
        return value if value.is_absolute() else (PROJECT_ROOT / value)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = _config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_path.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)


def _config_path() -> Path:
    # IMPETUS_CONFIG names another YAML file (tests, or a second deployment).
    return Path(os.environ.get("IMPETUS_CONFIG", DEFAULT_CONFIG))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, built once."""
    return Settings()


def load_settings(**overrides: Any) -> Settings:
    """Fresh settings with explicit overrides (tests, or a CLI flag that wins over everything)."""
    return Settings(**overrides)
