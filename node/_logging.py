"""Structured logs: one line per event, JSON or key=value, level from the settings."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["configure_logging"]


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _iso(created: float) -> str:
    """ISO 8601 UTC with milliseconds: 2026-11-27T18:40:11.123Z."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


class _KeyValue(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = _iso(record.created)
        line = (
            f"ts={ts} level={record.levelname.lower()} logger={record.name} "
            f"msg={json.dumps(record.getMessage(), ensure_ascii=False)}"
        )
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


def configure_logging(level: str = "INFO", fmt: str = "kv") -> None:
    """Route tallystick and uvicorn logs to stderr in ``fmt`` ("json" or "kv")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if fmt == "json" else _KeyValue())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
