from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from viewbox.records.models import Patient


class Account(models.Model):
    """A patient's portal account: one Django user for one patient record.

    The one-to-one link to the patient is what refuses a second account for
    the same person.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="patient_account",
    )
    patient = models.OneToOneField(
        Patient, on_delete=models.PROTECT, related_name="account"
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    def __str__(self) -> str:
        return f"Account {self.pk}"


class EmailCode(models.Model):
    """A 6-digit code emailed during sign-up, stored only as a keyed hash.

    It works once, for 10 minutes and 5 tries, and only for the sign-up that
    asked for it.
    """

    # A random id kept in the sign-up's session; a code from another sign-up
    # never matches.
    sign_up_id = models.CharField(max_length=32, db_index=True)
    email = models.EmailField()
    code_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)
    used_at = models.DateTimeField(null=True, blank=True)
    superseded_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Email code {self.pk}"
