"""Counting failed attempts in the database, shared by every web worker.

Each failure adds a row to some buckets; a bucket key is locked while it holds
``limit`` rows younger than its window. Old rows are pruned as we go.
"""

import hashlib
import hmac
import logging
import math
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from viewbox.access.models import ThrottleEvent

logger = logging.getLogger(__name__)

PORTAL_KEY = "*"
Limits = dict[str, dict[str, int]]


def bucket_key(value: str) -> str:
    """Return a keyed hash, so that stored rows reveal no address or code."""
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, b"throttle:" + value.encode(), hashlib.sha256).hexdigest()


def _window(limits: Limits, bucket: str) -> timedelta:
    return timedelta(minutes=limits[bucket]["window_minutes"])


def locked_buckets(limits: Limits, keys: dict[str, str]) -> list[str]:
    """Return the buckets among ``keys`` that have reached their limit."""
    now = timezone.now()
    locked = []
    for bucket, key in keys.items():
        since = now - _window(limits, bucket)
        count = ThrottleEvent.objects.filter(
            bucket=bucket, key=key, created_at__gt=since
        ).count()
        if count >= limits[bucket]["limit"]:
            locked.append(bucket)
    return locked


def record_failure(limits: Limits, keys: dict[str, str]) -> list[str]:
    """Count one failure in each bucket; return the buckets it just locked."""
    now = timezone.now()
    ThrottleEvent.objects.bulk_create(
        ThrottleEvent(bucket=bucket, key=key, created_at=now)
        for bucket, key in keys.items()
    )
    newly_locked = []
    for bucket, key in keys.items():
        since = now - _window(limits, bucket)
        count = ThrottleEvent.objects.filter(
            bucket=bucket, key=key, created_at__gt=since
        ).count()
        if count == limits[bucket]["limit"]:
            newly_locked.append(bucket)
    _prune(limits, now)
    return newly_locked


def _prune(limits: Limits, now: datetime) -> None:
    for bucket in limits:
        expired = now - _window(limits, bucket)
        ThrottleEvent.objects.filter(bucket=bucket, created_at__lt=expired).delete()


def seconds_until_unlocked(limits: Limits, keys: dict[str, str]) -> int:
    """Return how long until every bucket among ``keys`` is below its limit."""
    now = timezone.now()
    longest = 0
    for bucket, key in keys.items():
        window = _window(limits, bucket)
        times = list(
            ThrottleEvent.objects.filter(
                bucket=bucket, key=key, created_at__gt=now - window
            )
            .order_by("created_at")
            .values_list("created_at", flat=True)
        )
        excess = len(times) - limits[bucket]["limit"]
        if excess >= 0:
            # The lock lifts when enough of the oldest failures age out.
            unlocked_at = times[excess] + window
            longest = max(longest, math.ceil((unlocked_at - now).total_seconds()))
    return longest
