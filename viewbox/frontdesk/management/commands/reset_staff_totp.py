from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from viewbox.audit.actions import record_event
from viewbox.frontdesk.models import StaffDevice


class Command(BaseCommand):
    help = (
        "Remove a staff member's TOTP authenticator, for a lost or new phone. "
        "They set up a new one at their next log-in."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the staff member's user name")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user is named {username!r}.")
        deleted, _ = StaffDevice.objects.filter(user=user).delete()
        record_event("staff.totp_reset", actor_kind="system", actor_id=user.pk)
        if deleted:
            self.stdout.write(
                f"Removed the authenticator of {username}. They set up a new one "
                "at their next log-in."
            )
        else:
            self.stdout.write(f"{username} had no authenticator.")
