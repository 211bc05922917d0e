from django.utils import timezone

from viewbox.downloads.models import Package
from viewbox.records.models import Exam


def ready_package_exam_ids(exams: list[Exam]) -> set[int]:
    """Return which of these exams have a package ready to download."""
    return set(
        Package.objects.filter(
            exam__in=exams,
            status=Package.Status.READY,
            expires_at__gt=timezone.now(),
        ).values_list("exam_id", flat=True)
    )


def latest_packages(exam: Exam) -> list[Package]:
    """Return the exam's live packages, one per format at most."""
    return list(
        Package.objects.filter(exam=exam, status__in=Package.LIVE_STATUSES).order_by(
            "format"
        )
    )
