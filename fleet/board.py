"""The board's vocabulary: the integer codes and names shuushuu-api stores, in one place.

Every value here is the board's own (``app/config.py``, ``app/models/image.py``,
``app/core/r2_constants.py``; see ``docs/board.md`` beside the checkout): fleet writes rows
the board's web process reads, so a code spelled differently here is a bug there. Plain
Python, no database or queue imports, so the pure render code can use it too.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime


class ImageStatus(enum.IntEnum):
    """``images.status``."""

    REVIEW = -4
    LOW_QUALITY = -3
    """Legacy: no longer set by today's board."""
    INAPPROPRIATE = -2
    """Legacy today; the seed-era board's status for an image removed by review."""
    REPOST = -1
    DEACTIVATED = 0
    ACTIVE = 1
    SPOILER = 2


PUBLIC_STATUSES = frozenset({ImageStatus.ACTIVE, ImageStatus.SPOILER, ImageStatus.REPOST})
"""Statuses whose files live in the public bucket; every other status is private."""


class VariantStatus(enum.IntEnum):
    """``images.medium`` / ``images.large``."""

    NONE = 0
    """Not needed (original small enough) or not smaller than the original: serve the original."""
    READY = 1
    PENDING = 2
    """Set by the upload; a render settles it to READY or NONE."""


class R2Location(enum.IntEnum):
    """``images.r2_location``: which bucket holds the image's objects."""

    NONE = 0
    """Not in a bucket yet: the board's finalize job uploads it, and retries while it is NONE."""
    PUBLIC = 1
    PRIVATE = 2


class ReviewStatus(enum.IntEnum):
    """``image_reviews.status``: an OPEN review past its deadline is what the cron settles."""

    OPEN = 0
    CLOSED = 1
    """Closed with its outcome and ``closed_at`` (and ``closed_by`` when a moderator closed it)."""


class ReviewOutcome(enum.IntEnum):
    """``image_reviews.outcome``."""

    PENDING = 0
    KEEP = 1
    """The image goes back to ACTIVE."""
    REMOVE = 2
    """The image is DEACTIVATED with the review's reason (INAPPROPRIATE on the seed-era board)."""
    SUPERSEDED = 3
    """Set only by the board, when a moderator changes the image's status by hand while the
    review is open; the seed-era board has no such outcome."""


class ReviewVote(enum.IntEnum):
    """``review_votes.vote``, 0 or 1 as the board's API takes it: the keep count is
    ``SUM(vote)``, so KEEP must stay 1."""

    REMOVE = 0
    KEEP = 1


class DeactivationReason(enum.IntEnum):
    """``reason_category`` of images, reviews and status history."""

    INAPPROPRIATE = 1
    """Also the default of ``image_reviews.reason_category``."""
    LOW_QUALITY = 2
    SPAM = 3
    OTHER = 4


class AdminActionType(enum.IntEnum):
    """``admin_actions.action_type``; fleet writes REVIEW_CLOSE and REVIEW_EXTEND."""

    REPORT_DISMISS = 1
    REPORT_ACTION = 2
    REVIEW_START = 3
    REVIEW_VOTE = 4
    REVIEW_CLOSE = 5
    REVIEW_EXTEND = 6
    IMAGE_STATUS_CHANGE = 7
    COMMENT_DELETE = 8
    IMAGE_DELETE = 9


class CloseReason(enum.StrEnum):
    """``details.close_reason`` of an automatic REVIEW_CLOSE."""

    QUORUM_REACHED = "quorum_reached"
    DEFAULT_AFTER_EXTENSION = "default_after_extension"


EXTEND_REASON = "deadline_expired_auto_extend"
"""``details.reason`` of an automatic REVIEW_EXTEND."""

REMOVED_BY_REVIEW = "Removed by community review"
"""The status reason the board records when a review removes an image and gave none."""


class Folder(enum.StrEnum):
    """Folders under ``STORAGE_PATH`` (and key prefixes in the buckets)."""

    ORIGINALS = "fullsize"
    THUMBS = "thumbs"
    MEDIUM = "medium"
    LARGE = "large"
    IQDB = "iqdb"
    """fleet's own, not the board's: the thumbnail's pixels as JPEG, for danbooru/iqdb."""


def utc_now() -> datetime:
    """Now as the board stores times: naive UTC (its DATETIME columns carry no zone)."""
    return datetime.now(UTC).replace(tzinfo=None)
