"""A bucket (``STORAGE_URL=s3://BUCKET``) as both sides open it: the img workers read originals
and write outputs there, the light workers read the IQDB JPEG. No pyvips here, so the light
image (which has none) opens the bucket with the very same settings and client options."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from fleet.settings import Settings

if TYPE_CHECKING:
    from obstore.store import S3Store


@dataclass(frozen=True, slots=True)
class BucketConfig:
    """An S3-compatible bucket (R2, S3, MinIO). Plain data: it travels to render processes,
    each of which opens its own client."""

    bucket: str
    endpoint: str | None = None
    region: str = "auto"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    retries: int = 3
    """Retries of a request that failed for a transient reason, before the job fails (retried)."""
    timeout_s: float = 30.0


BOARD_BUCKETS = "r2://"
"""STORAGE_URL for the board's two buckets: R2_PUBLIC_BUCKET for the public statuses, else
R2_PRIVATE_BUCKET (opt-in: a board's .env names both buckets even with R2 switched off)."""


@dataclass(frozen=True, slots=True)
class BucketPair:
    """The board's public and private buckets; an image's status chooses one."""

    public: BucketConfig
    private: BucketConfig

    def all(self) -> tuple[BucketConfig, BucketConfig]:
        return (self.public, self.private)


def bucket_config(settings: Settings) -> BucketConfig | None:
    """The one bucket of STORAGE_URL=s3://BUCKET; None for a folder or the board's two buckets."""
    if settings.storage_url is None or settings.storage_url == BOARD_BUCKETS:
        return None
    return _config(settings, settings.storage_url.removeprefix("s3://").rstrip("/"))


def bucket_pair(settings: Settings) -> BucketPair | None:
    """The board's two buckets (STORAGE_URL=r2://); None otherwise."""
    if settings.storage_url != BOARD_BUCKETS:
        return None
    assert settings.r2_public_bucket and settings.r2_private_bucket  # checked by Settings
    return BucketPair(
        _config(settings, settings.r2_public_bucket), _config(settings, settings.r2_private_bucket)
    )


def buckets(settings: Settings) -> tuple[BucketConfig, ...]:
    """Every bucket the settings name, public first; none for the folder STORAGE_PATH."""
    pair, one = bucket_pair(settings), bucket_config(settings)
    return pair.all() if pair else (one,) if one else ()


def _config(settings: Settings, bucket: str) -> BucketConfig:
    """``bucket`` at R2_ENDPOINT with the R2 credentials."""
    return BucketConfig(
        bucket=bucket,
        endpoint=settings.r2_endpoint,
        region=settings.storage_region,
        access_key_id=settings.r2_access_key_id,
        secret_access_key=settings.r2_secret_access_key,
    )


def open_bucket(config: BucketConfig) -> S3Store:
    """An obstore client for ``config``: signed requests, path-style URLs, bounded retries."""
    from obstore.store import S3Store

    return S3Store(
        config.bucket,
        endpoint=config.endpoint,
        region=config.region,
        access_key_id=config.access_key_id,
        secret_access_key=config.secret_access_key,
        virtual_hosted_style_request=False,
        client_options={
            "allow_http": bool(config.endpoint and config.endpoint.startswith("http://")),
            "timeout": timedelta(seconds=config.timeout_s),
            "connect_timeout": timedelta(seconds=min(5.0, config.timeout_s)),
        },
        retry_config={
            "max_retries": config.retries,
            "retry_timeout": timedelta(seconds=config.timeout_s),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2.0,
            },
        },
    )


NO_BUCKET = "NoSuchBucket"
"""In the message of obstore's NotFoundError when the bucket, not the object, is missing."""
_REFUSALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")


def missing_object(exc: Exception) -> bool:
    """The object is not there (and the bucket is): obstore's NotFoundError is a FileNotFoundError."""
    return isinstance(exc, FileNotFoundError) and NO_BUCKET not in str(exc)


def refusal(config: BucketConfig, doing: str, key: str, exc: Exception) -> str | None:
    """The one clear message for a failure that retrying cannot help (refused credentials or
    access, a bucket that does not exist); None for anything else (the server down, a
    timeout), which may pass and is retried."""
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    where = f"bucket {config.bucket} at {config.endpoint or 'AWS S3'}"
    if NO_BUCKET in str(exc):
        return f"cannot {doing} {key}: {where} does not exist; check STORAGE_URL"
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or any(c in str(exc) for c in _REFUSALS):
        return (
            f"cannot {doing} {key}: {where} refused the request ({first_line(exc)}); "
            "check R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY and the bucket name"
        )
    return None


def first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
