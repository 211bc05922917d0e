from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from viewbox.frontdesk import totp
from viewbox.frontdesk.models import StaffDevice


class Command(BaseCommand):
    help = (
        "Create or replace the demo's front desk user with a new password and "
        "an enrolled TOTP secret, and print both. For the demo only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="frontdesk")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        password = "demo-" + totp.generate_secret()[:16].lower()
        user, _ = get_user_model().objects.update_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        user.set_password(password)
        user.save()
        secret = totp.generate_secret()
        StaffDevice.objects.update_or_create(
            user=user,
            defaults={
                "secret": secret,
                "created_at": timezone.now(),
                "confirmed_at": timezone.now(),
                "last_used_step": 0,
            },
        )
        self.stdout.write(f"User name: {username}")
        self.stdout.write(f"Password:  {password}")
        self.stdout.write(f"TOTP key:  {secret} (time-based, 6 digits, 30 seconds)")
