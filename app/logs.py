"""Logging set-up: JSON lines (default) or plain text, for the service and uvicorn alike.

Access lines come from the `mvit.access` logger with the request's fields in `record.access`
(see `app.api.middleware.RequestContextMiddleware`); in JSON they are top-level keys of the line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

ACCESS_LOGGER = "mvit.access"
# uvicorn logs its start-up and shutdown lines as "uvicorn.error"; a grep for errors should not find them.
LOGGER_NAMES = {"uvicorn.error": "uvicorn.server"}
# Libraries whose loggers come with handlers of their own: one event must be one line, ours.
_OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "huggingface_hub")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": LOGGER_NAMES.get(record.name, record.name),
            **({"worker": self.worker} if self.worker is not None else {}),
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "access", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        tag = f" [worker {worker}]" if worker is not None else ""
        super().__init__(f"%(asctime)s %(levelname)s{tag} %(logger)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.logger = LOGGER_NAMES.get(record.name, record.name)
        text = super().format(record)
        fields = getattr(record, "access", None)
        if fields:
            text += " " + " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in fields.items())
        return text


def configure_logging(level: str, fmt: str, worker: int | None = None) -> None:
    """One stderr handler on the root logger; uvicorn's loggers propagate to it (its own config is off).
    A worker of several (`mvit serve --workers N`) tags its lines with its number."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _OWN_HANDLERS:
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
