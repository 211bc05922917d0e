from django.db import models
from django.utils.translation import gettext_lazy as _

from viewbox.records.models import Exam, Visit


class ICode(models.Model):
    """A code printed on the Portal Pass that opens some exams of one visit.

    Only a keyed hash of the code is stored; the code itself is shown once,
    when it is issued.
    """

    visit = models.ForeignKey(Visit, on_delete=models.PROTECT, related_name="icodes")
    exams = models.ManyToManyField(Exam, related_name="icodes")
    code_hash = models.CharField(max_length=64, unique=True)
    issued_at = models.DateTimeField(_("issued at"))
    expires_at = models.DateTimeField(_("expires at"))
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True)

    class Meta:
        verbose_name = "I-Code"

    def __str__(self) -> str:
        return f"I-Code {self.pk}"


class ThrottleEvent(models.Model):
    """A failed attempt, counted against a bucket such as one client address.

    Rows live in the database so that every web worker counts the same rows.
    """

    bucket = models.CharField(max_length=16)
    # A keyed hash of the client address or code; the portal bucket uses "*".
    key = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["bucket", "key", "created_at"])]

    def __str__(self) -> str:
        return f"{self.bucket} failure at {self.created_at:%Y-%m-%d %H:%M:%S}"
