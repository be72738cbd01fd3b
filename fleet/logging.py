"""Logging for every fleet process: structlog on top of stdlib logging (arq logs there too)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from fleet.settings import Settings


def log_format(setting: str, tty: bool) -> str:
    """``auto`` is JSON where a machine reads stderr (a container's log driver), console where a
    person does (a terminal); ``json`` and ``console`` are taken as they are."""
    fmt = setting.lower()
    if fmt == "auto":
        return "console" if tty else "json"
    return fmt


def configure_logging(settings: Settings) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format(settings.log_format, sys.stderr.isatty()) == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [structlog.stdlib.add_log_level, structlog.processors.TimeStamper(fmt="iso")]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    handler.addFilter(ArqNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips chatters at INFO
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class ArqNoise(logging.Filter):
    """arq's own lines, made quiet where fleet says it better.

    A failed job is one ``job_dead_lettered`` event; arq's line about it keeps its text but
    not its traceback (25-200 lines a letter) unless the level is DEBUG. And the SIGUSR1 that
    ``fleet.worker.close_worker`` sends each worker to end it is internal, not a shutdown an
    operator asked for: arq's "shutdown on SIGUSR1" line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("arq"):
            return True
        if record.args and isinstance(record.args, tuple) and "SIGUSR1" in map(str, record.args[:1]):
            return False
        if record.exc_info and not logging.getLogger().isEnabledFor(logging.DEBUG):
            record.exc_info = None
            record.exc_text = None
        return True


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
