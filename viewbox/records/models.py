import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _

from viewbox.directory.models import ImagingGroup, Location


class Patient(models.Model):
    """A person as recorded by the RIS of one imaging group (HL7 PID)."""

    group = models.ForeignKey(
        ImagingGroup, on_delete=models.PROTECT, related_name="patients"
    )
    # PID-3, the medical record number; DICOM files carry it as PatientID.
    mrn = models.CharField(_("medical record number"), max_length=64)
    family_name = models.CharField(_("family name"), max_length=128)
    given_name = models.CharField(_("given name"), max_length=128)
    birth_date = models.DateField(_("date of birth"))
    sex = models.CharField(_("sex"), max_length=1, blank=True)
    postal_code = models.CharField(_("ZIP code"), max_length=10, blank=True)
    phone = models.CharField(_("phone"), max_length=32, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["group", "mrn"], name="patient_mrn_unique_in_group"
            )
        ]

    def __str__(self) -> str:
        return f"Patient {self.pk}"

    @property
    def display_name(self) -> str:
        return f"{self.given_name} {self.family_name}".strip()


class Visit(models.Model):
    """One patient at one location on one date of service."""

    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="visits"
    )
    location = models.ForeignKey(
        Location, on_delete=models.PROTECT, related_name="visits"
    )
    date_of_service = models.DateField(_("date of service"))

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "location", "date_of_service"],
                name="visit_unique_per_day",
            )
        ]

    def __str__(self) -> str:
        return f"Visit {self.pk}"


class Exam(models.Model):
    """An ordered procedure with one accession number; images form one study."""

    class Status(models.TextChoices):
        SCHEDULED = "scheduled", _("Scheduled")
        IN_PROGRESS = "in_progress", _("In progress")
        COMPLETED = "completed", _("Completed")
        CANCELLED = "cancelled", _("Cancelled")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    group = models.ForeignKey(ImagingGroup, on_delete=models.PROTECT, related_name="+")
    visit = models.ForeignKey(Visit, on_delete=models.PROTECT, related_name="exams")
    accession_number = models.CharField(_("accession number"), max_length=16)
    procedure_code = models.CharField(_("procedure code"), max_length=32, blank=True)
    description = models.CharField(_("exam"), max_length=128)
    modality = models.CharField(_("modality"), max_length=16, blank=True)
    reason = models.CharField(_("reason for exam"), max_length=256, blank=True)
    referring_physician = models.CharField(
        _("referring physician"), max_length=128, blank=True
    )
    performed_at = models.DateTimeField(_("date and time"), null=True, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.SCHEDULED
    )
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["group", "accession_number"], name="accession_unique_in_group"
            )
        ]

    def __str__(self) -> str:
        return f"Exam {self.pk}"


class ReportVersion(models.Model):
    """One version of an exam's report as the RIS sent it (HL7 ORU^R01).

    Every final or corrected version is a whole report; an addendum arrives
    as a corrected version holding the original text and the addendum.
    """

    class Status(models.TextChoices):
        PRELIMINARY = "P", _("Preliminary")
        FINAL = "F", _("Final")
        CORRECTED = "C", _("Corrected")

    exam = models.ForeignKey(
        Exam, on_delete=models.PROTECT, related_name="report_versions"
    )
    status = models.CharField(_("status"), max_length=1, choices=Status.choices)
    text = models.TextField(_("report text"))
    radiologist = models.CharField(_("radiologist"), max_length=128, blank=True)
    signed_at = models.DateTimeField(_("signed at"), null=True, blank=True)
    sent_to_referrer_at = models.DateTimeField(
        _("sent to the referring physician at"), null=True, blank=True
    )
    received_at = models.DateTimeField(_("received at"), auto_now_add=True)
    # MSH-10 of the message that carried this version, for idempotent import.
    message_control_id = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["received_at", "pk"]

    def __str__(self) -> str:
        return f"Report version {self.pk}"


class Study(models.Model):
    """A DICOM study as received. It waits unmatched until its order arrives."""

    study_instance_uid = models.CharField(max_length=64, unique=True)
    exam = models.ForeignKey(
        Exam, on_delete=models.PROTECT, related_name="studies", null=True, blank=True
    )
    accession_number = models.CharField(max_length=16, blank=True)
    patient_id = models.CharField(max_length=64, blank=True)
    study_date = models.DateField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"Study {self.pk}"


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    modality = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=128, blank=True)
    series_number = models.IntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "series"
        ordering = ["series_number", "pk"]

    def __str__(self) -> str:
        return f"Series {self.pk}"


class Instance(models.Model):
    """One stored DICOM file, kept byte for byte as it arrived."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    series = models.ForeignKey(
        Series, on_delete=models.PROTECT, related_name="instances"
    )
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    sop_class_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    rows = models.PositiveIntegerField(default=0)
    columns = models.PositiveIntegerField(default=0)
    number_of_frames = models.PositiveIntegerField(default=1)
    # Path inside the default storage; built from internal ids only.
    file = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField()

    class Meta:
        ordering = ["instance_number", "pk"]

    def __str__(self) -> str:
        return f"Instance {self.pk}"

    @property
    def has_pixels(self) -> bool:
        return self.rows > 0 and self.columns > 0
