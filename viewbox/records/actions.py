import logging

from django.db import transaction

from viewbox.audit.actions import record_event
from viewbox.records.models import Exam, Study

logger = logging.getLogger(__name__)


def attach_waiting_studies(exam: Exam) -> int:
    """Attach studies that arrived before their order; return how many.

    A study waits unmatched until an exam with its accession number exists
    for the patient whose medical record number the DICOM files carry.
    """
    with transaction.atomic():
        waiting = Study.objects.select_for_update().filter(
            exam__isnull=True,
            accession_number=exam.accession_number,
            patient_id=exam.visit.patient.mrn,
        )
        attached = waiting.update(exam=exam)
    if attached:
        logger.info("Attached %d waiting studies to exam %d", attached, exam.pk)
        record_event("images.attach", patient_id=exam.visit.patient_id, exam_id=exam.pk)
    return attached
