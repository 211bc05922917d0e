from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from viewbox.audit.staff_views import AuditedRecordAdmin
from viewbox.records.models import Exam, Study


class MatchedFilter(admin.SimpleListFilter):
    title = "exam"
    parameter_name = "matched"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin
    ) -> list[tuple[str, str]]:
        return [("no", "Waiting for its order"), ("yes", "Matched to an exam")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[Study]
    ) -> QuerySet[Study]:
        if self.value() == "no":
            return queryset.filter(exam__isnull=True)
        if self.value() == "yes":
            return queryset.filter(exam__isnull=False)
        return queryset


@admin.register(Study)
class StudyAdmin(AuditedRecordAdmin):
    """Studies as received; staff look here for images waiting for an order."""

    audit_action = "staff.view_study"
    list_display = [
        "pk",
        "accession_number",
        "patient_id",
        "study_date",
        "exam",
        "received_at",
    ]
    list_filter = [MatchedFilter]
    search_fields = ["accession_number", "patient_id"]
    readonly_fields = [f.name for f in Study._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def audit_ids(self, obj: Study) -> tuple[int | None, int | None]:
        patient_id = obj.exam.visit.patient_id if obj.exam else None
        return patient_id, obj.exam_id


@admin.register(Exam)
class ExamAdmin(AuditedRecordAdmin):
    audit_action = "staff.view_exam"
    list_display = ["accession_number", "description", "modality", "status", "visit"]
    list_filter = ["status", "modality"]
    search_fields = ["accession_number"]
    readonly_fields = [f.name for f in Exam._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def audit_ids(self, obj: Exam) -> tuple[int | None, int | None]:
        return obj.visit.patient_id, obj.pk
