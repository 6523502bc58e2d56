"""Keeping request text out of the logs: BentoML logs validation failures with their tracebacks,
and pydantic's messages quote the input."""

from __future__ import annotations

import logging

from pydantic import ValidationError

# Loggers BentoML writes request failures to.
REQUEST_LOGGERS = ("bentoml._internal.server.http_app", "bentoml.serve", "bentoml")


class RequestTextFilter(logging.Filter):
    """Drops the traceback (which quotes the input) from records about invalid requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError | ValueError | UnicodeDecodeError):
            # A client's mistake, not a server error: logged as a warning, without the input.
            record.msg = f"{record.getMessage()}: {type(exc).__name__} (input not logged)"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def install_request_text_filter() -> None:
    """Attach the filter to BentoML's request loggers (idempotent)."""
    for name in REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RequestTextFilter) for f in logger.filters):
            logger.addFilter(RequestTextFilter())


def install_service_logging(level: int = logging.INFO) -> None:
    """Send tuneserve's own log lines (``service.*``, ``tuneserve.*``) through BentoML's handlers,
    so they appear in `bentoml serve`'s output with the worker's name and trace ids."""
    handlers = logging.getLogger("bentoml").handlers
    # the pool warns at every failed reconnect attempt; service/pool.py says it once per outage
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    for name in ("service", "tuneserve"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if handlers and not logger.handlers:
            for handler in handlers:
                logger.addHandler(handler)
            logger.propagate = False
