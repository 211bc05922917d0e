import json
import logging
from email.message import Message

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from viewbox.ingest.stow import MalformedBodyError, store_instances, token_is_valid

logger = logging.getLogger(__name__)

_DICOM_JSON = "application/dicom+json"


def _error(status: int, message: str) -> HttpResponse:
    # DICOMweb errors carry a plain-text reason; it names no patient data.
    return HttpResponse(message, status=status, content_type="text/plain")


def _dicom_multipart_header(content_type: str) -> Message | None:
    """Return the parsed header if it is multipart/related of application/dicom."""
    header = Message()
    header["content-type"] = content_type
    if header.get_content_type() != "multipart/related":
        return None
    part_type = header.get_param("type")
    if not isinstance(part_type, str) or part_type.lower() != "application/dicom":
        return None
    return header


# Callers authenticate with a bearer token, not a session cookie, so a
# cross-site form cannot post here with someone's credentials. The token is
# checked before anything else; without it nothing is read or stored.
@csrf_exempt
@require_POST
def store_studies(request: HttpRequest, study: str | None = None) -> HttpResponse:
    if not token_is_valid(request.headers.get("Authorization", "")):
        logger.warning("Refused a STOW-RS request without a valid token")
        response = _error(401, "A valid bearer token is required.")
        response["WWW-Authenticate"] = 'Bearer realm="dicomweb"'
        return response

    header = _dicom_multipart_header(request.headers.get("Content-Type", ""))
    if header is None:
        return _error(415, 'Send multipart/related; type="application/dicom".')
    # The media type is right, so a missing boundary is a malformed request,
    # not an unsupported one.
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        logger.warning("Refused a STOW-RS request without a multipart boundary")
        return _error(
            400,
            "Missing boundary parameter in the Content-Type: send "
            'multipart/related; type="application/dicom"; boundary=BOUNDARY.',
        )
    try:
        length = int(request.headers.get("Content-Length", ""))
    except ValueError:
        return _error(411, "Content-Length is required.")
    if length > settings.STOW_MAX_REQUEST_BYTES:
        logger.warning("Refused a STOW-RS request of %d bytes", length)
        return _error(
            413, f"The body is larger than {settings.STOW_MAX_REQUEST_BYTES} bytes."
        )

    try:
        result = store_instances(request, boundary.encode("latin-1"), study)
    except MalformedBodyError as error:
        logger.warning("Refused a malformed STOW-RS body: %s", error)
        return _error(400, f"Malformed multipart body: {error}.")
    if not result.referenced and not result.failed:
        return _error(400, "The body holds no part.")
    return HttpResponse(
        json.dumps(result.as_dicom_json()),
        status=result.http_status(),
        content_type=_DICOM_JSON,
    )
