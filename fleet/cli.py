"""The ``fleet`` command.

Commands of the core live here; worker packages add theirs (``fleet render``) through the
``fleet.commands`` entry point group, so fleet never imports a worker package.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from arq.utils import import_string
from arq.worker import Worker

from fleet.logging import configure_logging, get_logger
from fleet.registry import WORKERS
from fleet.services import embedded_defaults
from fleet.settings import get_settings

log = get_logger("fleet.cli")

Command = Callable[[argparse.Namespace], int]


def run_worker(kind: str, *, burst: bool = False) -> int:
    """Run one worker kind in the foreground until SIGINT/SIGTERM."""
    import uvloop

    settings = get_settings()
    configure_logging(settings)
    with embedded_defaults(settings) as settings:
        if get_settings().redis_url is None:
            log.warning("no REDIS_URL: serving a private redis-server", redis_url=settings.redis_url)
        factory = import_string(WORKERS[kind])
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())
        worker = Worker(**factory(settings), burst=burst)
        worker.run()
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    return run_worker(args.kind, burst=args.burst)


def _cmd_demo(args: argparse.Namespace) -> int:
    from fleet.demo import main as demo_main

    return demo_main(images=args.images, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a worker (see README for its settings)")
    worker.add_argument("kind", choices=sorted(WORKERS))
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.set_defaults(run=_cmd_worker)

    demo = sub.add_parser("demo", help="render a generated sample archive end to end on embedded services")
    demo.add_argument("--images", type=int, default=200)
    demo.add_argument("--keep", action="store_true", help="keep the sample storage root and print its path")
    demo.set_defaults(run=_cmd_demo)

    for plugin in entry_points(group="fleet.commands"):
        register: Callable[[Any], None] = plugin.load()
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Command = args.run
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
