"""The OpenTelemetry SDK side of tracing: a tracer provider that exports spans over OTLP/HTTP,
built from settings `telemetry`, and installed for pipelines/tracing.py's spans.

    provider = build_provider(settings.telemetry)   # None: tracing is off (no endpoint set)

Nothing is built, no exporter thread started and nothing sent unless `telemetry.otlp_endpoint`
is set; the SDK and the exporter are imported only then. `create_app` installs the provider for
the app's lifetime (serving/http/app.py) and shuts it down (flushing what is left) when the app
stops; a process without an app (`impetus ingest`, a Prefect worker) calls `ensure_installed`.
"""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING

from pipelines import tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from pipelines.settings import Settings, TelemetrySettings

_lock = threading.Lock()


def traces_url(endpoint: str) -> str:
    """The collector's traces URL: `endpoint` as given when it names /v1/traces, else under it
    (OTLP's convention for a base endpoint, as OTEL_EXPORTER_OTLP_ENDPOINT)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def build_provider(telemetry: TelemetrySettings) -> TracerProvider | None:
    """A provider exporting to `telemetry.otlp_endpoint` in batches; None when it is unset."""
    if telemetry.otlp_endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create(
        {"service.name": telemetry.service_name, "service.version": _version()}
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(telemetry.sample_ratio))
    )
    exporter = OTLPSpanExporter(endpoint=traces_url(telemetry.otlp_endpoint), timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("impetus")
    except PackageNotFoundError:  # a checkout that is not installed
        return "0+unknown"


def ensure_installed(settings: Settings) -> None:
    """Install the settings' provider for this process unless tracing is on already (a server
    that runs the flow) or off in the settings; it is flushed when the process exits."""
    with _lock:
        if tracing.enabled():
            return
        provider = build_provider(settings.telemetry)
        if provider is None:
            return
        tracing.install(provider)
        atexit.register(provider.shutdown)
