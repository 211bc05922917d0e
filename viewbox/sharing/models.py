import uuid

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from viewbox.access.models import ICode
from viewbox.accounts.models import Account
from viewbox.records.models import Exam, Patient


class ShareLink(models.Model):
    """A password-protected link that shows chosen exams to someone else.

    The token in the link and the password are stored only as hashes. A link
    made in an I-Code session belongs to that I-Code; one made in an account
    session belongs to the account. Either way it shows only exams of the
    patient who made it.
    """

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="share_links"
    )
    exams = models.ManyToManyField(Exam, related_name="share_links")
    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    icode = models.ForeignKey(
        ICode, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    nickname = models.CharField(_("nickname"), max_length=80)
    token_hash = models.CharField(max_length=64, unique=True)
    password_hash = models.CharField(max_length=256)
    allow_download = models.BooleanField(default=False)
    # The last day the link works, in the time zone of the exams' location,
    # and the moment that day ends.
    expires_on = models.DateField()
    expires_at = models.DateTimeField()
    notify_email = models.EmailField(blank=True)
    # The language the patient used, for the email about the first opening.
    language = models.CharField(max_length=8, default="en")
    created_at = models.DateTimeField(default=timezone.now)
    first_opened_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Wrong passwords since the last right one; each tenth pauses the link
    # and the limit locks it until the patient unlocks it.
    wrong_passwords = models.PositiveIntegerField(default=0)
    paused_until = models.DateTimeField(null=True, blank=True)
    locked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(account__isnull=False, icode__isnull=True)
                | models.Q(account__isnull=True, icode__isnull=False),
                name="share_link_has_one_owner",
            )
        ]

    def __str__(self) -> str:
        return f"Share link {self.pk}"

    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()

    def creator_stopped(self) -> bool:
        """Return True when the I-Code or account that made the link no longer works.

        A leaked or expired code, or a disabled account, must not live on
        through its links, and a code that front desk reactivates brings its
        links back.
        """
        icode = self.icode
        if icode is not None and (
            icode.revoked_at is not None or icode.expires_at <= timezone.now()
        ):
            return True
        return self.account is not None and not self.account.user.is_active

    def status(self) -> str:
        """Return revoked, expired, ended, locked, paused or active.

        "ended" is a link whose I-Code or account no longer works.
        """
        if self.revoked_at is not None:
            return "revoked"
        if self.is_expired():
            return "expired"
        if self.creator_stopped():
            return "ended"
        if self.locked_at is not None:
            return "locked"
        if self.paused_until is not None and self.paused_until > timezone.now():
            return "paused"
        return "active"


class ShareAccess(models.Model):
    """One try to open a link: when, and whether the password was right."""

    class Outcome(models.TextChoices):
        RIGHT = "right", _("Right password")
        WRONG = "wrong", _("Wrong password")
        PAUSED = "paused", _("Refused: link paused after wrong passwords")
        LOCKED = "locked", _("Refused: link locked after wrong passwords")

    link = models.ForeignKey(
        ShareLink, on_delete=models.CASCADE, related_name="accesses"
    )
    at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=8, choices=Outcome.choices)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["link", "at"])]

    def __str__(self) -> str:
        return f"{self.get_outcome_display()} at {self.at:%Y-%m-%d %H:%M:%S}"
