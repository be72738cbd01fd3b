"""The failure rule: how a job's failure ends it (the README's "How failures end"), as pure
functions, apart from the plumbing that acts on it (:mod:`fleet.worker`).

- :func:`classify` sorts what job code raised into a :class:`JobError`: permanent or
  transient, with its ``error_type``;
- :func:`decide` turns that failure (or none), the try number and the :class:`RetryPolicy`
  into the :data:`Outcome`: :class:`Done`, :class:`RetryLater` or :class:`GiveUp` (dead letter).

No Redis, no clock, no randomness: the jitter of a retry is drawn when it is acted on
(:meth:`RetryLater.delay_s`). ``tests/test_failure_rule.py`` holds one row per line of the
README's table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from redis import exceptions as redis_errors
from redis.exceptions import RedisError

from fleet import serializer
from fleet.errors import JobError, PermanentError, TransientError
from fleet.settings import Settings

_REDIS_NEVER = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.MaxConnectionsError,
)
"""Connection errors retrying cannot cure: a wrong password or ACL, a pool too small."""
_REDIS_TRANSIENT = (
    redis_errors.ConnectionError,  # includes BusyLoadingError (a replica loading its data)
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a replica that was the primary before a failover
    redis_errors.ClusterDownError,  # includes MasterDownError
    redis_errors.TryAgainError,
    redis_errors.AskError,  # includes MovedError: slots moving during a failover
    redis_errors.OutOfMemoryError,  # maxmemory: eviction or a drained queue frees room
    redis_errors.WatchError,
)
"""Redis errors that may succeed when tried again; every other one (WRONGTYPE, NOSCRIPT, a
wrong password, a bad argument) never will."""


def classify(exc: BaseException, *, timeout_s: float | None = None) -> JobError:
    """How an exception out of job code ends the job: a :class:`JobError` says so itself;
    Redis or a connection gone mid-job is transient; a Redis error retrying cannot cure, and
    anything else, is a permanent failure (dead-lettered with its class and message, never
    swallowed). ``timeout_s``: the job ran under that timeout, so a ``TimeoutError`` is the job
    running past it (transient: plain arq would fail it for good). Messages are cut at
    MAX_MESSAGE_CHARS."""
    if isinstance(exc, JobError):
        if len(str(exc)) > serializer.MAX_MESSAGE_CHARS:  # it travels on in arq's log of the failure
            exc.args = (serializer.cut(str(exc)),)
        return exc
    if timeout_s is not None and isinstance(exc, TimeoutError):
        return TransientError(f"ran longer than {timeout_s:g} s", error_type="JobTimeout")
    message = serializer.cut(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, _REDIS_NEVER):
        return PermanentError(message, error_type="RedisRefused")
    if isinstance(exc, (*_REDIS_TRANSIENT, ConnectionError)):  # Redis or another service away mid-job
        return TransientError(message, error_type="ServiceUnavailable")
    if isinstance(exc, RedisError):
        return PermanentError(message, error_type="RedisRefused")
    return PermanentError(message, error_type=f"Unexpected{type(exc).__name__}")


def unfinished_tries(job_try: int, max_tries: int) -> PermanentError | None:
    """A job on a try past ``max_tries`` gives up before it runs: only reachable when its runs
    ended without an outcome (the worker was killed or stopped during each of them)."""
    if job_try <= max_tries:
        return None
    return PermanentError(f"gave up after {job_try - 1} tries that never finished", error_type="TooManyTries")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how late a transient failure is tried again (MAX_TRIES, RETRY_BASE_S,
    RETRY_CAP_S)."""

    max_tries: int
    base_s: float
    cap_s: float

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.max_tries, settings.retry_base_s, settings.retry_cap_s)

    def ceiling_s(self, job_try: int) -> float:
        """The longest wait after try ``job_try`` (numbers start at 1): exponential, capped."""
        return min(self.cap_s, self.base_s * 2.0 ** (job_try - 1))


@dataclass(frozen=True, slots=True)
class Done:
    """The job returned: its result is kept."""


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Try again after a full-jitter wait of up to ``ceiling_s``."""

    ceiling_s: float

    def delay_s(self) -> float:
        return random.uniform(0, self.ceiling_s)


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Dead-letter the job with this reason."""

    error_type: str
    message: str


Outcome = Done | RetryLater | GiveUp


def decide(failure: JobError | None, job_try: int, policy: RetryPolicy) -> Outcome:
    """The outcome of try ``job_try``: done without a failure; a transient failure with tries
    left is retried with backoff; a permanent one, or the last try's, is dead-lettered."""
    if failure is None:
        return Done()
    if not failure.permanent and job_try < policy.max_tries:
        return RetryLater(policy.ceiling_s(job_try))
    message = str(failure) if failure.permanent else f"gave up after {job_try} tries: {failure}"
    return GiveUp(failure.error_type, message)


def backoff_s(job_try: int, settings: Settings) -> float:
    """The wait before the next try after ``job_try``, for work a job queues again itself (a
    bulk batch's failed images): the same backoff as :func:`decide`'s."""
    return RetryLater(RetryPolicy.of(settings).ceiling_s(job_try)).delay_s()
