"""The request log: one line per request on both protocols, off by default.

``streamserve serve --access_log`` turns it on. Each finished request (every adapter
reports it to :meth:`InferenceCore.observe_request`) becomes one INFO record of the
``streamserve.access`` logger::

    request model=m version=1 protocol=tfserving api=predict status=OK latency_ms=1.234

With ``--log-format json`` it is one JSON object with those fields. Nothing from the
request's content (inputs, headers, tokens) is logged.
"""

from __future__ import annotations

import logging

from streamserve.server.context import ServerContext

log = logging.getLogger("streamserve.access")


def install(context: ServerContext) -> None:
    """Adapter hook called by :class:`streamserve.server.app.Server`."""
    if context.options.access_log:
        context.core.add_request_observer(log_request)


def log_request(
    model: str, version: str, protocol: str, api: str, status: str, seconds: float
) -> None:
    """Log one request (a :data:`~streamserve.server.core.RequestObserver`)."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields = {
        "model": model or "-",
        "version": version or "-",
        "protocol": protocol,
        "api": api,
        "status": status,
        "latency_ms": round(seconds * 1000, 3),
    }
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    # event + fields: JsonLogFormatter writes them as one JSON object
    log.info("request %s", text, extra={"event": "request", "fields": fields})
