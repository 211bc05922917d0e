from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from viewbox.access.models import ICode
from viewbox.directory.models import Location


class StaffDevice(models.Model):
    """A staff member's TOTP authenticator, confirmed by a first right code.

    The secret is kept on the server, because checking a code needs it.
    ``last_used_step`` makes each code work once: a code of that time step
    or an earlier one is rejected.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="totp"
    )
    secret = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    confirmed_at = models.DateTimeField(null=True, blank=True)
    last_used_step = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = _("two-factor device")

    def __str__(self) -> str:
        return f"TOTP device {self.pk}"


class HelpRequest(models.Model):
    """A request to renew an expired I-Code, sent from the portal's help form.

    The typed code is kept only as the same keyed hash that I-Codes are
    stored as, so that staff can match it without ever seeing a code.
    """

    # NOTE: decided requests keep the typed name, date of birth and email;
    # nothing deletes them yet, so a retention period is still to be set.

    class Status(models.TextChoices):
        PENDING = "pending", _("Waiting")
        APPROVED = "approved", _("Approved")
        DECLINED = "declined", _("Declined")

    location = models.ForeignKey(
        Location, on_delete=models.PROTECT, related_name="help_requests"
    )
    name = models.CharField(_("name"), max_length=256)
    birth_date = models.DateField(_("date of birth"))
    # Empty when what was typed cannot be an I-Code at all.
    code_hash = models.CharField(max_length=64, blank=True)
    email = models.EmailField(_("email"))
    language = models.CharField(max_length=8, default="en")
    created_at = models.DateTimeField(_("received at"), db_index=True)
    status = models.CharField(
        _("status"), max_length=8, choices=Status.choices, default=Status.PENDING
    )
    decided_at = models.DateTimeField(_("decided at"), null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    # The I-Code renewed on approval.
    icode = models.ForeignKey(
        ICode, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["created_at", "pk"]
        verbose_name = _("Get Help request")
        permissions = [
            (
                "use_front_desk",
                "Can print Portal Passes, answer Get Help and attach images",
            )
        ]

    def __str__(self) -> str:
        return f"Get Help request {self.pk}"
