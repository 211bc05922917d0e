from datetime import datetime

from django import template
from django.utils import formats, timezone

register = template.Library()


@register.filter
def person_name(value: str) -> str:
    """Show a name that a RIS sent in capitals ("Dr. PAT EXAMPLE") as "Dr. Pat Example".

    Names typed in mixed case are left alone, so "McDonald" stays as it is.
    """
    words = str(value).split()
    return " ".join(word.title() if word.isupper() else word for word in words)


@register.filter
def when(value: datetime | None) -> str:
    """Format a time in the active time zone, with the zone's abbreviation.

    For example "June 2, 2026, 9:00 AM PDT". The format follows the active
    language; the zone is the one the page activated, usually the location's.
    """
    if value is None:
        return ""
    local = timezone.localtime(value)
    return f"{formats.date_format(local, 'DATETIME_FORMAT')} {local.tzname()}"
