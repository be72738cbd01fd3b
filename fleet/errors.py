"""The exceptions fleet raises, and the two classes every job failure falls into.

A job ends done, retried later (``TransientError``), or dead-lettered (``PermanentError``).
Both derive from ``JobError``, a ``BaseException`` like ``asyncio.CancelledError``, so a
broad ``except Exception`` in job code cannot swallow a retry signal (the design this
replaces lost every IQDB retry that way). Only the queue layer (``fleet.worker``) catches
them, and turns them into arq outcomes (the rule itself: :mod:`fleet.failures`).

The whole tree, with the classes the worker packages add (fleet imports none of them)::

    BaseException
    ├── Exception
    │   └── FleetError                      raised to fleet's callers
    │       ├── EnqueueError                a job could not be queued (an API answers 503)
    │       ├── PayloadTooLargeError        also a ValueError: refused before Redis
    │       ├── RegistryError               a worker's handlers do not match the registry
    │       ├── SettingsError               fleet.settings; also a ValueError
    │       └── JobFailedError              a job's failure, as its result carries it
    └── JobError                            raised inside a job: how it ends
        ├── PermanentError                  dead-lettered at once
        │   ├── InvalidPayloadError         the arguments do not match the payload
        │   └── IqdbRejected                ratingworker.iqdb: a 3xx or 4xx, with its ``status``
        └── TransientError                  retried with backoff, then dead-lettered

Every ``JobError`` and ``JobFailedError`` names its cause in ``error_type`` (the class name
unless told otherwise, e.g. ``TooManyPixelsError``): the field dead letters, results and job
events carry. The render code's own ``RenderError`` tree (``imgworker.render.errors``) stays
plain ``Exception``\\ s that never leave a render: the img jobs turn a failed render into one
of these.
"""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error fleet raises to its callers."""


class EnqueueError(FleetError):
    """A job could not be queued (Redis down, refused, or timed out).

    Raised, never swallowed: an API that catches it can answer 503, and an upload never
    "succeeds" with no job behind it.
    """


class PayloadTooLargeError(FleetError, ValueError):
    """A payload over the bounds of :func:`fleet.serializer.payload_problem`: refused before it
    reaches Redis (a worker would refuse it too, and dead-letter it)."""


class RegistryError(FleetError):
    """A worker does not register exactly the jobs the registry assigns to its queue."""


class JobFailedError(FleetError):
    """A job ended in failure; carries the worker-side error class and message."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class JobError(BaseException):
    """Raised inside a job to say how it failed.

    ``error_type`` names the cause (e.g. ``TooManyPixelsError``) for dead letters and results;
    it defaults to the class name."""

    permanent: bool = False

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type or type(self).__name__


class PermanentError(JobError):
    """Retrying cannot help: bad input, missing file, a 4xx answer."""

    permanent = True


class TransientError(JobError):
    """Retrying later may help: a service down, a timeout, a crashed render process."""


class InvalidPayloadError(PermanentError):
    """The job's arguments do not match its declared payload."""
