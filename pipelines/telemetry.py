"""Turn off every dependency's telemetry before it is imported (DESIGN.md: offline by default)."""

from __future__ import annotations

import os

_OFF = {
    "DO_NOT_TRACK": "1",  # unstructured, and tools that honour the convention
    "SCARF_NO_ANALYTICS": "true",  # unstructured's analytics
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",  # Great Expectations
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "ANONYMIZED_TELEMETRY": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",  # its banner on stdout would break --json output
}


def disable() -> None:
    """Set the opt-outs unless the user set them otherwise."""
    for key, value in _OFF.items():
        os.environ.setdefault(key, value)
