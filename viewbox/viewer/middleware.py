from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware


class NoStoreMiddleware:
    """Keep every dynamic response out of browser and proxy caches.

    Pages and images may carry health information; static files are served
    earlier by WhiteNoise and keep their long cache lifetimes.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response["Cache-Control"] = "no-store"
        response["Pragma"] = "no-cache"
        return response


class FetchMetadataCsrfMiddleware(CsrfViewMiddleware):
    """Django's CSRF protection, made to work with ``Referrer-Policy: no-referrer``.

    Under that policy browsers send ``Origin: null`` and no Referer with a
    form post, which fails Django's origin and Referer checks. Browsers also
    send ``Sec-Fetch-Site``, a header no page script can set. When its value
    is "same-origin", the origin check passes. The CSRF token is
    checked in every case.
    """

    def _origin_verified(self, request: HttpRequest) -> bool:
        if request.META.get("HTTP_SEC_FETCH_SITE") == "same-origin":
            return True
        return bool(super()._origin_verified(request))  # type: ignore[misc]

    def _check_referer(self, request: HttpRequest) -> None:
        if request.META.get("HTTP_SEC_FETCH_SITE") == "same-origin":
            return
        super()._check_referer(request)  # type: ignore[misc]
