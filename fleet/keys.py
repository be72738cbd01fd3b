"""Every Redis key fleet reads or writes, named in one place (the model: ``arq/constants.py``).

Fleet's own keys all start with ``{namespace}:`` (NAMESPACE), so several fleets, or test
runs, share one Redis. arq owns a few keys outside it, which fleet reads and writes too (it
queues bulk batches and coalesced jobs itself, renews job locks, reads jobs back); their
names come from arq's constants, re-exported here so that no other module spells them:

- ``arq:job:{job_id}``: a queued job, ``arq:in-progress:{job_id}``: its lock while it runs,
  ``arq:retry:{job_id}``: its try count, ``arq:result:{job_id}``: its result;
- ``arq:queue`` (the queue of a job enqueued without one; fleet always names its queues) and
  ``arq:abort`` (jobs asked to abort; fleet never asks).

Key shapes change only with a migration note: a rolling upgrade runs old and new replicas on
the same keys.
"""

from __future__ import annotations

from arq.constants import (
    abort_jobs_ss,
    default_queue_name,
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

# --- arq's own keys (outside NAMESPACE) ------------------------------------------------------

ARQ_DEFAULT_QUEUE = default_queue_name
ARQ_ABORT = abort_jobs_ss


def job_key(job_id: str) -> str:
    """A queued job's definition (function, arguments, enqueue time), until it finishes."""
    return job_key_prefix + job_id


def in_progress_key(job_id: str) -> str:
    """A running job's lock: while it exists no other worker starts the job."""
    return in_progress_key_prefix + job_id


def retry_key(job_id: str) -> str:
    """How many times arq has started the job."""
    return retry_key_prefix + job_id


def result_key(job_id: str) -> str:
    """A finished job's result, kept KEEP_RESULT_S."""
    return result_key_prefix + job_id


def health_check_key(queue_name: str) -> str:
    """Where arq's worker of ``queue_name`` writes its health line."""
    return queue_name + health_check_key_suffix


# --- fleet's keys (under NAMESPACE) ------------------------------------------------------------
# Each says its Redis type and how long it lives: nothing fleet writes grows without bound.


def queue_key(namespace: str, queue: str) -> str:
    """A queue (a :class:`fleet.registry.Queue`): arq's sorted set of job ids by due time."""
    return f"{namespace}:queue:{queue}"


def wake_key(queue_name: str) -> str:
    """A list of wake tokens beside arq's queue ``queue_name``, capped at fleet.wake.TOKENS_KEPT."""
    return f"{queue_name}:wake"


def cron_name(namespace: str, name: str) -> str:
    """A cron job's arq name, not a key: arq builds its job ids (so its result keys) from it."""
    return f"{namespace}:{name}"


def pending_key(namespace: str, job_name: str, values: str) -> str:
    """A coalesced job's slot, a string holding the job id while one job with these payload
    ``values`` waits; it expires with the job (JOB_EXPIRY_S) if nothing frees it."""
    return f"{namespace}:pending:{job_name}:{values}"


def replicas_key(namespace: str, queue: str) -> str:
    """A sorted set of a queue's replicas scored by their last heartbeat; stale ones are
    dropped after ten HEALTH_INTERVAL_S."""
    return f"{namespace}:replicas:{queue}"


def replica_info_key(replicas: str) -> str:
    """Beside a queue's ``replicas`` key: a hash of each replica's numbers (JSON), beaten with it."""
    return f"{replicas}:info"


def finished_key(namespace: str, queue: str, bucket: int) -> str:
    """A counter of the jobs of ``queue`` finished in one time ``bucket``, expiring after two
    minutes: the throughput `fleet health` shows."""
    return f"{namespace}:finished:{queue}:{bucket}"


def dead_letter_key(namespace: str, job_id: str) -> str:
    """One dead letter, a JSON string expiring after DEAD_LETTER_TTL_S."""
    return f"{namespace}:dead:{job_id}"


def dead_index_key(namespace: str, queue: str) -> str:
    """A queue's dead letters: a sorted set of job ids by failure time, trimmed to
    DEAD_LETTER_MAX, its entries past DEAD_LETTER_TTL_S forgotten."""
    return f"{namespace}:dead-index:{queue}"


def dead_dropped_key(namespace: str, queue: str) -> str:
    """A counter of the queue's letters dropped past DEAD_LETTER_MAX (kept: it is a total)."""
    return f"{namespace}:dead-dropped:{queue}"


def bulk_run_prefix(namespace: str) -> str:
    """What every bulk run's keys start with: `fleet web` lists the runs by scanning it."""
    return f"{namespace}:rethumb:"


def bulk_run_key(namespace: str, run_id: str) -> str:
    """A bulk run: a hash of counters, cursor and the options it started with, expiring
    BULK_RUN_TTL_S after the run's last activity, like its bitmap."""
    return bulk_run_prefix(namespace) + run_id


def bulk_done_key(run_key: str, block: int) -> str:
    """One block of a bulk run's bitmap of finished ids (``block`` is the id's high bits)."""
    return f"{run_key}:done:{block}"


def bulk_done_pattern(run_key: str) -> str:
    """A SCAN pattern for every block of a run's bitmap."""
    return f"{run_key}:done*"


def render_settings_key(namespace: str, fingerprint: str) -> str:
    """When render settings of this fingerprint were first used (epoch seconds; kept): outputs
    older than that are stale."""
    return f"{namespace}:render-settings:{fingerprint}"


def render_lost_key(namespace: str, file: str) -> str:
    """A counter of the renders of one original that lost their process, expiring after a day:
    the second loss blames the input."""
    return f"{namespace}:render-lost:{file}"


def rating_prior_key(namespace: str) -> str:
    """The global rating prior, JSON ``[C, m]``, expiring after RATING_PRIOR_TTL_S."""
    return f"{namespace}:rating:prior"
