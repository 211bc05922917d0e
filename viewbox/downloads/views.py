from datetime import timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone, translation
from django.views.decorators.http import require_GET, require_http_methods

from viewbox.access.scope import (
    Requester,
    access_exam_for_download,
    access_package_by_public_id,
)
from viewbox.downloads import actions
from viewbox.downloads.forms import DownloadForm
from viewbox.downloads.models import Package
from viewbox.records.models import Exam
from viewbox.viewer.views import exam_context, patient_required


def _portal_url(request: HttpRequest, requester: Requester, exam: Exam) -> str:
    """Return where the notice email sends its reader back to.

    A patient signs in at the exam's portal; the recipient of a link opens
    the link again, so the email points to a page that explains this.
    """
    if requester.is_recipient:
        return request.build_absolute_uri(reverse("sharing:password"))
    location = exam.visit.location
    path = reverse("viewer:sign_in_choices", args=[location.group.slug, location.slug])
    return request.build_absolute_uri(path)


@require_http_methods(["GET", "POST"])
@patient_required
def request_download(
    request: HttpRequest, requester: Requester, exam_id: str
) -> HttpResponse:
    exam = access_exam_for_download(requester, exam_id)
    form = DownloadForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        package = actions.request_package(
            requester,
            exam,
            form.cleaned_data["format"],
            email=form.cleaned_data["email"],
            portal_url=_portal_url(request, requester, exam),
            language=translation.get_language() or "en",
        )
        return redirect("downloads:status", exam.public_id, package.public_id)
    context = exam_context(request, requester, exam, "images")
    context["form"] = form
    status = 400 if request.method == "POST" else 200
    return render(request, "downloads/request.html", context, status=status)


@require_GET
@patient_required
def package_status(
    request: HttpRequest, requester: Requester, exam_id: str, package_id: str
) -> HttpResponse:
    exam, package = access_package_by_public_id(requester, exam_id, package_id)
    if actions.retry_if_stalled(package):
        package.refresh_from_db()
    context = exam_context(request, requester, exam, "images")
    context["package"] = package
    context["expires_soon"] = _expires_soon(package)
    return render(request, "downloads/status.html", context)


@require_GET
@patient_required
def package_progress(
    request: HttpRequest, requester: Requester, exam_id: str, package_id: str
) -> HttpResponse:
    """Return the status as JSON for the status page's progress bar."""
    _, package = access_package_by_public_id(requester, exam_id, package_id)
    return JsonResponse({"status": package.status, "progress": package.progress})


@require_GET
@patient_required
def package_file(
    request: HttpRequest, requester: Requester, exam_id: str, package_id: str
) -> FileResponse:
    _, package = access_package_by_public_id(requester, exam_id, package_id)
    expires_at = package.expires_at
    ready = package.status == Package.Status.READY and expires_at is not None
    if not ready or expires_at is None or expires_at <= timezone.now():
        raise Http404("Not found")
    actions.record_download(requester, package)
    # The file name says nothing about the patient or the exam.
    filename = f"exam-{package.public_id.hex[:8]}.{package.format}"
    response = FileResponse(
        default_storage.open(package.file, "rb"), as_attachment=True, filename=filename
    )
    # The status page watches for this cookie to confirm that the download
    # started; it names the package by a short part of its random id.
    response.set_cookie(
        "viewbox_download",
        package.public_id.hex[:8],
        max_age=120,
        samesite="Strict",
        secure=settings.HTTPS,
    )
    return response


def _expires_soon(package: Package) -> bool:
    if package.status != Package.Status.READY or package.expires_at is None:
        return False
    warning = timedelta(hours=settings.PACKAGE_WARN_HOURS)
    return package.expires_at - timezone.now() <= warning
