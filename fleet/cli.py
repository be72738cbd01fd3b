"""The ``fleet`` command.

Commands of the core live here; worker packages add theirs (``fleet render``) through the
``fleet.commands`` entry point group, so fleet never imports a worker package.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

from arq.utils import import_string

from fleet.client import FleetClient
from fleet.deadletters import DeadLetters
from fleet.deadletters import retry as retry_letter
from fleet.errors import FleetError
from fleet.logging import configure_logging, get_logger
from fleet.registry import WORKERS, Queue
from fleet.services import embedded_defaults
from fleet.settings import get_settings
from fleet.worker import close_worker, make_worker

log = get_logger("fleet.cli")

Command = Callable[[argparse.Namespace], int]


LIGHT = ("iqdb", "db")


async def serve(worker_kwargs: Sequence[dict[str, Any]], *, burst: bool = False) -> None:
    """Run workers in this event loop until SIGINT/SIGTERM (or, with ``burst``, until empty).

    Signals are handled here, once, and passed to every worker: arq installs one handler
    per worker otherwise, and the last one installed would be the only one to stop."""
    workers = [make_worker(kwargs, burst=burst, handle_signals=False) for kwargs in worker_kwargs]

    def stop(signum: signal.Signals) -> None:
        # Drain: take no new jobs, give running ones DRAIN_GRACE_S, then cancel (= requeue) the rest.
        for worker in workers:
            worker.handle_sig_wait_for_completion(signum)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    try:
        await asyncio.gather(*(w.async_run() for w in workers))
    except asyncio.CancelledError:
        pass  # a signal stopped the workers
    finally:
        await asyncio.gather(*(close_worker(w) for w in workers))


def run_workers(kinds: Sequence[str], *, burst: bool = False) -> int:
    """Run one or more worker kinds in one process (``light`` means iqdb and db)."""
    import uvloop

    kinds = [k for kind in kinds for k in (LIGHT if kind == "light" else (kind,))]
    configured = get_settings()
    configure_logging(configured)
    with embedded_defaults(configured) as settings:
        if configured.redis_url is None:
            log.warning("no REDIS_URL: serving a private redis-server", redis_url=settings.redis_url)
        worker_kwargs = [import_string(WORKERS[kind])(settings) for kind in kinds]
        uvloop.run(serve(worker_kwargs, burst=burst))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    return run_workers(args.kinds, burst=args.burst)


async def _dead(args: argparse.Namespace) -> int:
    settings = get_settings()
    async with await FleetClient.connect(settings) as client:
        letters = DeadLetters(client.redis, settings.namespace, settings.dead_letter_ttl_s)
        if args.action == "list":
            found = await letters.list(args.queue)
            for letter in found:
                if args.json:
                    print(letter.to_json())
                else:
                    when = datetime.fromtimestamp(letter.failed_at).isoformat(timespec="seconds")
                    print(
                        f"{letter.job_id}  {letter.queue:8} {letter.function}  tries={letter.tries}  {when}"
                    )
                    print(f"    {letter.error_type}: {letter.message}")
            if not args.json:
                print(f"{len(found)} dead letter(s)")
            return 0
        if args.action == "purge":
            print(f"purged {await letters.purge(args.queue)} dead letter(s)")
            return 0
        # retry
        chosen = await letters.list(args.queue) if args.all else []
        for job_id in args.ids:
            found_letter = await letters.get(job_id)
            if found_letter is None:
                print(f"no dead letter {job_id}", file=sys.stderr)
                return 1
            chosen.append(found_letter)
        failed = 0
        for letter in chosen:
            try:
                job = await retry_letter(letters, letter, client)
            except FleetError as exc:
                print(f"cannot retry {letter.job_id}: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"{letter.job_id} -> queued again as {job.job_id}")
        return 1 if failed else 0


def _cmd_dead(args: argparse.Namespace) -> int:
    if args.action == "retry" and not (args.ids or args.all):
        print("fleet dead retry: give job ids or --all", file=sys.stderr)
        return 2
    return asyncio.run(_dead(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from fleet.demo import main as demo_main

    return demo_main(images=args.images, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a worker (see README for its settings)")
    worker.add_argument(
        "kinds",
        nargs="+",
        choices=[*sorted(WORKERS), "light"],
        metavar="KIND",
        help=f"one or more of {', '.join(sorted(WORKERS))}; light = iqdb db",
    )
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.set_defaults(run=_cmd_worker)

    dead = sub.add_parser("dead", help="list, retry or purge dead letters (jobs that failed for good)")
    dead.add_argument("action", choices=["list", "retry", "purge"])
    dead.add_argument("ids", nargs="*", metavar="ID", help="job ids to retry")
    dead.add_argument("--queue", choices=[q.value for q in Queue])
    dead.add_argument("--all", action="store_true", help="retry every dead letter (of --queue)")
    dead.add_argument("--json", action="store_true", help="list as JSON lines")
    dead.set_defaults(run=_cmd_dead)

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
