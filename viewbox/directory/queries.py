from datetime import date
from zoneinfo import ZoneInfo

from django.shortcuts import get_object_or_404
from django.utils import timezone

from viewbox.directory.models import Location


def location_or_404(group_slug: str, location_slug: str) -> Location:
    return get_object_or_404(
        Location.objects.select_related("group__state"),
        group__slug=group_slug,
        slug=location_slug,
    )


def local_today(location: Location) -> date:
    """Return today's date where the location is."""
    return timezone.localdate(timezone=ZoneInfo(location.state.time_zone))
