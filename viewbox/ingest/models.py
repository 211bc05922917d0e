from django.db import models


class QuarantinedFile(models.Model):
    """An input file that could not be imported, kept aside for staff."""

    class Kind(models.TextChoices):
        DICOM = "dicom", "DICOM"
        HL7 = "hl7", "HL7 v2"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    original_name = models.CharField(max_length=255)
    # Absolute path under QUARANTINE_DIR, named from an internal id.
    path = models.CharField(max_length=512)
    reason = models.TextField()
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.get_kind_display()} file {self.original_name}"


class HL7Message(models.Model):
    """An HL7 v2 message as received, processed or kept aside with the reason.

    REJECTED rows are the dead-letter list that staff see and retry. A
    rejected message becomes RESOLVED when a retry or a later copy with the
    same MSH-4 and MSH-10 is processed, and ``resolved_by`` points to the
    PROCESSED row.
    """

    class Status(models.TextChoices):
        PROCESSED = "processed"
        REJECTED = "rejected"
        RESOLVED = "resolved"

    control_id = models.CharField(max_length=64, blank=True, db_index=True)
    # MSH-4, which scopes the control ID; empty when it could not be read.
    sending_facility = models.CharField(max_length=64, blank=True)
    message_type = models.CharField(max_length=16, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    error = models.TextField(blank=True)
    raw = models.TextField()
    source_name = models.CharField(max_length=255, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    retried_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        verbose_name = "HL7 message"
        permissions = [("retry_hl7message", "Can retry a rejected HL7 message")]

    def __str__(self) -> str:
        return f"HL7 {self.message_type} {self.control_id}"
