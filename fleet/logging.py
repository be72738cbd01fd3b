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


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
