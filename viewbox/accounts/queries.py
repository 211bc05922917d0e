from typing import Any

from django.contrib.auth import get_user_model

from viewbox.directory.models import Location


def users_for_identifier(identifier: str, location: Location) -> list[Any]:
    """Return the active patient users of the group named by User ID or email."""
    value = identifier.strip()
    users = get_user_model().objects.filter(
        is_active=True, patient_account__patient__group=location.group
    )
    if "@" in value:
        return list(users.filter(email__iexact=value))
    return list(users.filter(username__iexact=value))
