"""The ``fleet`` command.

Commands of the core live here; worker packages add theirs (``fleet render``) through the
``fleet.commands`` entry point group, so fleet never imports a worker package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.client import FleetClient, redis_url_shown
from fleet.errors import FleetError
from fleet.registry import CRON_JOBS, CRON_RUNNER, WORKERS, Queue
from fleet.serializer import printable
from fleet.services import embedded_defaults, redis_record, with_redis_default, with_sqlite_default
from fleet.settings import Settings, SettingsError, get_settings, load_env_file, masked_url

if TYPE_CHECKING:
    from fleet.deadletters import DeadLetters

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
    """What each command's parser is added to (a plugin's ``register()`` is given it too)."""

# Imported where used, not here: the worker machinery, dead letters and arq's import_string
# cost a tenth of a second that `fleet health` (a container healthcheck, every few seconds)
# does not need.


def _log() -> Any:
    from fleet.logging import get_logger

    return get_logger("fleet.cli")


Command = Callable[[argparse.Namespace], int]


LIGHT = ("iqdb", "db")


async def serve(worker_kwargs: Sequence[dict[str, Any]], *, burst: bool = False) -> int:
    """Run workers in this event loop until SIGINT/SIGTERM (or, with ``burst``, until empty).

    Signals are handled here, once, and passed to every worker: arq installs one handler
    per worker otherwise, and the last one installed would be the only one to stop. If one
    worker dies of an error, the others are drained and the process exits non-zero, so a
    supervisor restarts it."""
    from fleet.worker import close_worker, make_worker

    workers = [make_worker(kwargs, burst=burst, handle_signals=False) for kwargs in worker_kwargs]

    def stop(signum: signal.Signals) -> None:
        # Drain: take no new jobs, give running ones DRAIN_GRACE_S, then cancel (= requeue) the rest.
        for worker in workers:
            worker.handle_sig_wait_for_completion(signum)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    failure: BaseException | None = None
    try:
        pending = {asyncio.ensure_future(w.async_run()) for w in workers}
        while pending:  # each worker ends when its own drain is over
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None and failure is None:
                    failure = task.exception()
                    _log().error("a worker died; stopping the others", error=repr(failure))
                    stop(signal.SIGTERM)
    finally:
        await asyncio.gather(*(close_worker(w) for w in workers))
    return 1 if failure else 0


def run_workers(kinds: Sequence[str], *, burst: bool = False) -> int:
    """Run one or more worker kinds in one process (``light`` means iqdb and db)."""
    import uvloop
    from arq.utils import import_string

    kinds = [k for kind in kinds for k in (LIGHT if kind == "light" else (kind,))]
    configured = get_settings()
    from fleet.logging import configure_logging

    configure_logging(configured)
    with embedded_defaults(configured) as settings:
        if configured.redis_url is None:
            _log().warning(
                "no REDIS_URL: using the embedded redis-server of the storage root",
                redis_url=settings.redis_url,
                recorded_in=str(redis_record(settings.storage_path)),
            )
        else:
            _log().info("redis", redis_url=redis_url_shown(settings))
        worker_kwargs = []
        for kind in kinds:
            made = import_string(WORKERS[kind])(settings)  # one queue's settings, or a list
            worker_kwargs += made if isinstance(made, list) else [made]
        return uvloop.run(serve(worker_kwargs, burst=burst))


def _cmd_worker(args: argparse.Namespace) -> int:
    if args.backend:  # the setting, so child processes and the settings checks see it too
        os.environ["RENDER_BACKEND"] = args.backend
        get_settings.cache_clear()
    return run_workers(args.kinds, burst=args.burst)


async def _dead(args: argparse.Namespace) -> int:
    from fleet.deadletters import DeadLetters
    from fleet.deadletters import retry as retry_letter

    if args.action == "retry" and not (args.ids or args.all):
        print("fleet dead retry: give job ids or --all", file=sys.stderr)
        return 2
    settings = get_settings()
    async with await _connect(settings) as client:
        letters = DeadLetters.of(client.redis, settings)
        if args.action == "list":
            return await _list_letters(letters, args)
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


async def _list_letters(letters: DeadLetters, args: argparse.Namespace) -> int:
    """One page of letters, newest first; names and messages with control characters escaped
    (``--json`` escapes them as JSON does)."""
    if args.limit < 1 or args.offset < 0:
        print("fleet dead list: --limit must be at least 1 and --offset at least 0", file=sys.stderr)
        return 2
    page = await letters.page(args.queue, limit=args.limit, offset=args.offset)
    for letter in page:
        if args.json:
            print(letter.to_json())
            continue
        when = datetime.fromtimestamp(letter.failed_at).isoformat(timespec="seconds")
        print(printable(f"{letter.job_id}  {letter.queue:8} {letter.function}  tries={letter.tries}  {when}"))
        print(printable(f"    {letter.error_type}: {letter.message}"))
    if not args.json:
        total = await letters.count(args.queue)
        queues = [args.queue] if args.queue else [q.value for q in Queue]
        dropped = sum([await letters.dropped(q) for q in queues])
        shown = f"{args.offset + 1}-{args.offset + len(page)} of " if page and len(page) < total else ""
        more = f"; {dropped} older dropped over DEAD_LETTER_MAX={letters.max_kept}" if dropped else ""
        print(f"{shown}{total} dead letter(s), newest first{more}")
    return 0


async def _health(args: argparse.Namespace) -> int:
    from fleet import health

    settings = get_settings()
    if args.self:
        return await _health_self(settings, Queue(args.queue) if args.queue else None)
    queues = [Queue(args.queue)] if args.queue else list(Queue)
    async with await _connect(settings) as client:
        results = [await health.check(client.redis, settings, q) for q in queues]
    for result in results:
        state = "ok" if result.healthy else "FAIL"
        line = f"{result.queue:9} {state:4} live={len(result.live)} stale={','.join(result.stale) or '-'}"
        troubles = "; ".join(f"{replica}: {problem}" for replica, problem in result.troubled.items())
        print(line + (f" troubled={troubles}" if troubles else ""))
    return 0 if all(r.healthy for r in results) else 1


async def _health_self(settings: Settings, queue: Queue | None) -> int:
    """A container's healthcheck: this container's workers only, each by its own beat."""
    from redis.exceptions import RedisError

    from fleet import health

    async with await _connect(settings) as client:
        try:
            results = await health.check_self(client.redis, settings, queue)
        except (RedisError, OSError) as exc:  # one line in the container's health log, no traceback
            print(f"FAIL cannot read the beats from Redis: {exc}")
            return 1
    if not results:
        where = f"{settings.runtime_dir} (namespace {settings.namespace})"
        print(f"FAIL no live fleet worker registered in {where}")
        return 1
    for r in results:
        state = "ok" if r.healthy else "FAIL"
        why = "" if r.beating else f" (none within HEALTH_INTERVAL_S={settings.health_interval_s:g})"
        why += f" ({r.problem})" if r.problem else ""
        print(f"{r.queue:9} {state:4} {r.replica} last beat {r.age_s:.1f} s ago{why}")
    return 0 if all(r.healthy for r in results) else 1


async def _status(args: argparse.Namespace) -> int:
    from fleet import health

    settings = get_settings()
    async with await _connect(settings) as client:
        rows = [await health.status(client.redis, settings, q) for q in Queue]
    if args.json:
        print(json.dumps(rows))
        return 0
    columns = [
        "queue",
        "ready",
        "deferred",
        "in_progress",
        "dead_letters",
        "live_replicas",
        "finished_last_minute",
    ]
    print("  ".join(f"{c:>12}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>12}" for c in columns))
    return 0


async def _connect(settings: Settings) -> FleetClient:
    """The command's client; says on stderr which Redis it reads (password masked), so an
    answer from the wrong Redis is never mistaken for the truth."""
    client = await FleetClient.connect(settings)
    print(f"fleet: Redis {client.where}", file=sys.stderr)
    return client


VARIANTS = ("thumb", "medium", "large")
"""What ``fleet rethumb --variants`` can name (the IQDB JPEG comes with the thumbnail)."""


def _variant_list(text: str) -> tuple[str, ...]:
    """``thumb,medium``; an unknown name is an error listing the valid ones, never a run
    that reports success and writes nothing."""
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if unknown := [v for v in names if v not in VARIANTS] or ([] if names else [text]):
        raise argparse.ArgumentTypeError(
            f"unknown variant {', '.join(map(repr, unknown))}: use {', '.join(VARIANTS)}"
        )
    return names


def _id_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    return int(first), int(last or first)


async def _rethumb(args: argparse.Namespace) -> int:
    from fleet import db
    from fleet.bulk import Selection, rethumb
    from fleet.progress import ProgressReporter

    configured = get_settings()
    from fleet.logging import configure_logging

    configure_logging(configured.replace(log_level="WARNING"))  # the progress bar, then one JSON line
    selection = Selection(
        ids=args.ids,
        since=args.since,
        until=args.until,
        from_dir=args.from_dir,
        from_prefix=args.from_prefix,
        variants=args.variants or (),
        mode="missing" if args.missing else "stale",
        reindex=args.reindex,
    )
    engine = None if selection.listed else db.create_engine(with_sqlite_default(configured))
    reporter = None if args.json else ProgressReporter()
    try:
        async with await _connect(configured) as client:
            summary = await rethumb(
                client.redis, configured, selection, engine=engine, resume=args.resume, force=args.force,
                dry_run=args.dry_run, progress=reporter, wait_for_workers_s=args.wait_for_workers,
                warn=lambda line: print(f"fleet rethumb: {line}", file=sys.stderr, flush=True),
            )  # fmt: skip
    finally:
        if engine is not None:
            await engine.dispose()
    data = summary.as_json()
    if summary.already_finished:
        print(
            f"run {summary.run_id} already finished; --missing renders what has no outputs yet "
            "(e.g. images added since), --force renders it all again",
            file=sys.stderr,
        )
    elif "resumed" in data:
        print(
            f"run {summary.run_id} resumed with the options it started with: {data['options']}",
            file=sys.stderr,
        )
    if "refused" in data:
        print(f"fleet rethumb: workers refused the run: {data['refused']}", file=sys.stderr)
    print(json.dumps(data))
    return 1 if summary.failed else 0


def async_command(
    name: str, body: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], interrupted: str = ""
) -> Command:
    """A command running ``body`` in an event loop; fleet's own errors become one clear line,
    and so does Ctrl-C (with ``interrupted``, what to do next)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(body(args))
        except FleetError as exc:
            print(f"fleet {name}: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"fleet {name}: interrupted" + (f"; {interrupted}" if interrupted else ""), file=sys.stderr)
            return 130
        except Exception as exc:
            if (problem := _database_problem(exc)) is None:
                raise
            print(f"fleet {name}: {problem}", file=sys.stderr)
            return 2

    return run


def _database_problem(exc: BaseException) -> str | None:
    """A database failure as one line (like a Redis one), with a hint where there is one;
    None for anything else. SQLAlchemy is only imported by commands that used it."""
    sqlalchemy = sys.modules.get("sqlalchemy")
    if sqlalchemy is None or not isinstance(exc, sqlalchemy.exc.SQLAlchemyError | OSError):
        return None
    from fleet.db import classify_db_error

    failure = classify_db_error(exc)
    settings = get_settings()
    where = masked_url(settings.database_url or f"SQLite under {settings.storage_path}")
    hint = ""
    if failure.error_type == "DatabaseSchemaError":
        hint = " (the embedded SQLite: `fleet db init` makes its tables; a board: check DATABASE_URL)"
    return f"{failure} [{where}]{hint}"


async def _db(args: argparse.Namespace) -> int:
    """Make fleet's demo tables in the embedded SQLite (never in a board's database)."""
    from fleet import db

    settings = with_sqlite_default(get_settings())
    url = settings.database_url or ""
    if not url.startswith("sqlite"):
        print(
            f"fleet db init: DATABASE_URL={masked_url(url)} is not SQLite; a board's tables come from "
            "its own migrations, and fleet only reads and updates them",
            file=sys.stderr,
        )
        return 2
    settings.storage_path.mkdir(parents=True, exist_ok=True)
    engine = db.create_engine(settings)
    try:
        await db.create_schema(engine)
    finally:
        await engine.dispose()
    print(f"fleet db init: tables ready in {url}")
    return 0


async def _cron(args: argparse.Namespace) -> int:
    from arq.utils import import_string

    settings = with_sqlite_default(get_settings())
    from fleet.logging import configure_logging

    configure_logging(settings)
    result = await import_string(CRON_RUNNER)(args.name, settings)
    print(json.dumps({"cron": args.name, "result": result}))
    return 0


def _cmd_web(args: argparse.Namespace) -> int:
    """The operators' page; imported here, so `fleet health` never loads Starlette."""
    from fleet import web

    try:
        settings = with_redis_default(get_settings())
    except FleetError as exc:
        print(f"fleet web: {exc}", file=sys.stderr)
        return 2
    mode = "actions need WEB_TOKEN" if settings.web_token else "read-only: no WEB_TOKEN"
    where = f"http://{settings.web_host}:{settings.web_port}/"
    print(f"fleet web: {where} ({mode}); Redis {redis_url_shown(settings)}", file=sys.stderr)
    return web.serve(settings)


def _cmd_demo(args: argparse.Namespace) -> int:
    from fleet.demo import main as demo_main

    return demo_main(images=args.images, keep=args.keep)


def _add_worker(sub: Subcommands) -> None:
    worker = sub.add_parser("worker", help="run a worker (see README for its settings)")
    worker.add_argument(
        "kinds",
        nargs="+",
        choices=[*sorted(WORKERS), "light"],
        metavar="KIND",
        help=f"one or more of {', '.join(sorted(WORKERS))}; light = iqdb db",
    )
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument(
        "--backend",
        choices=["cpu", "gpu"],
        help="img workers: render on the process pool or a GPU (sets RENDER_BACKEND; see README)",
    )
    worker.set_defaults(run=_cmd_worker)


def _add_health(sub: Subcommands) -> None:
    health = sub.add_parser(
        "health", help="exit non-zero unless every queue (or --queue) has live replicas, none stale"
    )
    health.add_argument("--queue", choices=[q.value for q in Queue])
    health.add_argument(
        "--self",
        action="store_true",
        help="only the workers of this container (registered under RUNTIME_DIR): each must be beating",
    )
    health.set_defaults(run=async_command("health", _health))


def _add_status(sub: Subcommands) -> None:
    status = sub.add_parser(
        "status", help="per queue: ready, deferred, in progress, dead letters, replicas, throughput"
    )
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=async_command("status", _status))


def _add_dead(sub: Subcommands) -> None:
    dead = sub.add_parser("dead", help="list, retry or purge dead letters (jobs that failed for good)")
    dead.add_argument("action", choices=["list", "retry", "purge"])
    dead.add_argument("ids", nargs="*", metavar="ID", help="job ids to retry")
    dead.add_argument("--queue", choices=[q.value for q in Queue])
    dead.add_argument("--all", action="store_true", help="retry every dead letter (of --queue)")
    dead.add_argument("--json", action="store_true", help="list as JSON lines")
    dead.add_argument("--limit", type=int, default=50, help="list at most this many (newest first)")
    dead.add_argument("--offset", type=int, default=0, help="list after skipping this many")
    dead.set_defaults(run=async_command("dead", _dead))


def _add_rethumb(sub: Subcommands) -> None:
    rethumb = sub.add_parser(
        "rethumb", help="re-render archive originals on the img-bulk queue (bounded, resumable)"
    )
    source = rethumb.add_mutually_exclusive_group()
    source.add_argument("--ids", type=_id_range, metavar="A-B", help="image ids A to B (inclusive)")
    source.add_argument(
        "--from-dir", type=Path, metavar="DIR", help="the originals in DIR instead of the database"
    )
    source.add_argument(
        "--from-prefix",
        metavar="PREFIX",
        help="the originals under PREFIX (fullsize/...) in the bucket(s) of STORAGE_URL, not the database",
    )
    rethumb.add_argument("--since", type=date.fromisoformat, help="names dated on or after YYYY-MM-DD")
    rethumb.add_argument(
        "--until", type=date.fromisoformat, help="stored names dated on or before YYYY-MM-DD"
    )
    rethumb.add_argument("--missing", action="store_true", help="only originals lacking an output at all")
    rethumb.add_argument(
        "--variants", type=_variant_list, help=f"comma list of {','.join(VARIANTS)} (default: all)"
    )
    rethumb.add_argument(
        "--reindex",
        choices=["changed", "always", "never"],
        default="changed",
        help="IQDB after a re-render: when the thumbnail changed (default), always, never",
    )
    rethumb.add_argument("--resume", action="store_true", help="continue an interrupted run")
    rethumb.add_argument("--force", action="store_true", help="start over and render everything")
    rethumb.add_argument("--dry-run", action="store_true", help="count the work, queue nothing")
    rethumb.add_argument("--json", action="store_true", help="only the final JSON summary")
    rethumb.add_argument(
        "--wait-for-workers",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up when no worker serves img-bulk for this long (default 60; 0: wait for ever)",
    )
    rethumb.set_defaults(
        run=async_command(
            "rethumb", _rethumb, interrupted="the run is kept: the same command with --resume continues it"
        )
    )


def _add_db(sub: Subcommands) -> None:
    database = sub.add_parser("db", help="init: make fleet's demo tables in the embedded SQLite")
    database.add_argument("action", choices=["init"])
    database.set_defaults(run=async_command("db", _db))


def _add_cron(sub: Subcommands) -> None:
    cron = sub.add_parser("cron", help="run one cron job of the db worker once, now, in this process")
    cron.add_argument(
        "name", choices=sorted(CRON_JOBS), help="; ".join(f"{k}: {v}" for k, v in CRON_JOBS.items())
    )
    cron.set_defaults(run=async_command("cron", _cron))


def _add_web(sub: Subcommands) -> None:
    web = sub.add_parser(
        "web", help="the operators' page: queues, replicas, bulk runs, dead letters (WEB_HOST:WEB_PORT)"
    )
    web.set_defaults(run=_cmd_web)


def _add_demo(sub: Subcommands) -> None:
    demo = sub.add_parser("demo", help="render a generated sample archive end to end on embedded services")
    demo.add_argument("--images", type=int, default=200)
    demo.add_argument("--keep", action="store_true", help="keep the sample storage root and print its path")
    demo.set_defaults(run=_cmd_demo)


CORE: dict[str, Callable[[Subcommands], None]] = {
    "worker": _add_worker,
    "health": _add_health,
    "status": _add_status,
    "dead": _add_dead,
    "rethumb": _add_rethumb,
    "db": _add_db,
    "cron": _add_cron,
    "web": _add_web,
    "demo": _add_demo,
}
"""The core commands, in the order the usage lists them, each with what adds its parser."""
CORE_COMMANDS = tuple(CORE)


def _add_plugins(sub: Subcommands, plugins: bool | str) -> None:
    """The commands of the ``fleet.commands`` entry points: all, none, or only the one named;
    one that cannot be imported here is left out (e.g. the rating image has no libvips)."""
    from importlib.metadata import entry_points

    for plugin in entry_points(group="fleet.commands") if plugins else ():
        if isinstance(plugins, str) and plugin.name != plugins:
            continue
        try:
            register: Callable[[Any], None] = plugin.load()
        except ImportError as exc:  # e.g. the rating image has no libvips, a worker image no bench/
            _log().debug("fleet command unavailable here", command=plugin.name, error=str(exc))
            continue
        register(sub)


def build_parser(*, plugins: bool | str = True) -> argparse.ArgumentParser:
    """The whole command line; ``plugins``: all plugin commands, none, or only the one named
    (a plugin's import costs up to a second: only the command being run pays it)."""
    parser = argparse.ArgumentParser(prog="fleet", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="read settings from a .env file first (the board's own works); set variables win",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in CORE.values():
        add(sub)
    _add_plugins(sub, plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        if env_file := _env_file(words):
            load_env_file(env_file)
        get_settings()  # every setting checked before any work, in one clear line
        command = next(
            (w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1 : i] != ["--env-file"]),
            None,
        )
        args = build_parser(plugins=_plugins_for(command)).parse_args(words)
        run: Command = args.run
        return run(args)
    except SettingsError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 2


def _plugins_for(command: str | None) -> bool | str:
    """A core command loads no plugin, a plugin's command only its own; help or an unknown
    word loads them all, so the usage lists every command."""
    from importlib.metadata import entry_points

    if command in CORE_COMMANDS:
        return False
    if command in {plugin.name for plugin in entry_points(group="fleet.commands")}:
        return command or True
    return True


def _env_file(words: Sequence[str]) -> Path | None:
    """``--env-file PATH`` (or ``--env-file=PATH``), read before anything else: plugins and
    the settings check must see the file's variables."""
    for i, word in enumerate(words):
        if word == "--env-file" and i + 1 < len(words):
            return Path(words[i + 1])
        if word.startswith("--env-file="):
            return Path(word.split("=", 1)[1])
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
