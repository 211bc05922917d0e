"""Audit entries for staff sessions that the admin ends itself."""

from typing import Any

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http import HttpRequest

from viewbox.access.scope import client_address
from viewbox.audit.actions import record_event


@receiver(user_logged_out)
def record_staff_log_out(
    sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any
) -> None:
    """Record a staff member's log-out from the admin.

    Patients sign out by flushing the session, which sends no signal; their
    sign-outs are recorded by ``viewbox.access.actions.sign_out``.
    """
    if user is None or not user.is_staff:
        return
    record_event(
        "staff.log_out",
        actor_kind="staff",
        actor_id=user.pk,
        client_address=client_address(request) if request is not None else None,
    )
