import uuid

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from viewbox.records.models import Exam


class Package(models.Model):
    """An exam prepared as a ZIP or a disc image, kept for a day.

    At most one package per exam and format is live (queued, preparing or
    ready), so requests from several people for the same exam share it.
    """

    class Format(models.TextChoices):
        ZIP = "zip", ".zip"
        ISO = "iso", ".iso"

    class Status(models.TextChoices):
        QUEUED = "queued", _("Waiting to start")
        PREPARING = "preparing", _("Preparing")
        READY = "ready", _("Ready")
        FAILED = "failed", _("Failed")
        EXPIRED = "expired", _("Expired")

    LIVE_STATUSES = (Status.QUEUED, Status.PREPARING, Status.READY)

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    exam = models.ForeignKey(Exam, on_delete=models.PROTECT, related_name="packages")
    format = models.CharField(max_length=3, choices=Format.choices)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.QUEUED
    )
    # Percent done while preparing.
    progress = models.PositiveSmallIntegerField(default=0)
    # Name in the default storage; made from the package's id only.
    file = models.CharField(max_length=255, blank=True)
    size = models.PositiveBigIntegerField(null=True, blank=True)
    instance_count = models.PositiveIntegerField(null=True, blank=True)
    # Why it failed, as a code the page turns into words: "space" or "error".
    failure = models.CharField(max_length=16, blank=True)
    # The language of the request that started it, for README.TXT and the
    # offline viewer.
    language = models.CharField(max_length=8, default="en")
    # What the package was built from (released report version and stored
    # images), so that a request after a change gets a new package.
    content_key = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # Updated while a worker prepares the package; a stale one means the
    # worker died and the package may be prepared again.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    warned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["exam", "format"],
                condition=Q(status__in=["queued", "preparing", "ready"]),
                name="one_live_package_per_exam_and_format",
            )
        ]

    def __str__(self) -> str:
        return f"Package {self.pk} ({self.format}, {self.status})"


class PackageNotice(models.Model):
    """An email address to tell when a package is ready, and before it expires.

    The emails hold no health information: only a link to the portal.
    """

    package = models.ForeignKey(
        Package, on_delete=models.CASCADE, related_name="notices"
    )
    email = models.EmailField()
    portal_url = models.URLField()
    language = models.CharField(max_length=8, default="en")
    ready_sent_at = models.DateTimeField(null=True, blank=True)
    warning_sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Notice {self.pk} for package {self.package_id}"
