"""Structured, secret-free logging.

One line per call event: `event=barge_in call=CA… bot=support played_ms=840`. `CallLogger` binds
the call id and bot so no line can forget them. A filter on the root handler scrubs every
configured secret and anything shaped like a JWT or bearer token, so a key that leaks into an
exception message still never reaches a log file.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
import time
from typing import Any

_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[^\s'\",]+")


class Redactor(logging.Filter):
    """Replaces secrets in the formatted message (and in exception text) with `***`."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, *secrets: str) -> None:
        for s in secrets:
            if s and len(s) >= 4:
                self._secrets.add(s)
                if "." in s:  # a GLM id.secret key: the secret half alone is just as sensitive
                    self._secrets.update(p for p in s.split(".") if len(p) >= 8)

    def scrub(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            if s in text:
                text = text.replace(s, "***")
        text = _JWT_RE.sub("***jwt***", text)
        return _BEARER_RE.sub(r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self.scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = self.scrub(str(exc))
            if text != str(exc):  # drop the traceback rather than print the secret
                record.exc_info = None
                record.msg = f"{record.msg} ({type(exc).__name__}: {text})"
        return True


REDACTOR = Redactor()


def _fmt_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    if s == "" or any(c in s for c in ' "=\n'):
        return json.dumps(s, ensure_ascii=False)
    return s


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields = getattr(record, "fields", None)
        body = " ".join(f"{k}={_fmt_value(v)}" for k, v in fields.items()) if fields else record.getMessage()
        line = f"{ts} {record.levelname:<5} {record.name} {body}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": record.created, "level": record.levelname, "logger": record.name}
        fields = getattr(record, "fields", None)
        out.update(fields) if fields else out.update(msg=record.getMessage())
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return REDACTOR.scrub(json.dumps(out, ensure_ascii=False, default=str))


def setup_logging(level: str = "INFO", fmt: str = "text", secrets: list[str] | None = None) -> None:
    REDACTOR.add(*(secrets or []))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_gateway", False):
            root.removeHandler(h)
    handler._gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    warnings.showwarning = _log_warning


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning (PyJWT's InsecureKeyLengthWarning for a short HMAC key: GLM's API keys'
    secrets and Vonage's signature secrets are what they are) as one log line, once per place,
    instead of raw text with a source line on stderr."""
    logging.getLogger("gateway").warning("event=library_warning category=%s message=%s", category.__name__,
                                         _fmt_value(str(message)[:300]))


class CallLogger:
    """A logger bound to one call: every line carries `call` and `bot` (and the stream, once known)."""

    def __init__(self, logger: logging.Logger, **bound: Any):
        self._logger = logger
        self.bound = {k: v for k, v in bound.items() if v is not None}

    def bind(self, **more: Any) -> None:
        self.bound.update({k: v for k, v in more.items() if v is not None})

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if not self._logger.isEnabledFor(level):
            return
        payload = {"event": event, **self.bound, **{k: v for k, v in fields.items() if v is not None}}
        msg = REDACTOR.scrub(" ".join(f"{k}={_fmt_value(v)}" for k, v in payload.items()))
        # Scrubbed here, not only by the handler filter: any handler (a test's, a library's)
        # sees clean text, and formatters read the structured copy directly.
        clean = {k: (REDACTOR.scrub(v) if isinstance(v, str) else v) for k, v in payload.items()}
        self._logger.log(level, "%s", msg, extra={"fields": clean}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields, exc_info=exc_info)
