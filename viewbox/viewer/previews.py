"""Rendered JPEGs of stored images, kept in storage once made.

Rendering a mammogram takes a fraction of a second; a cache file beside the
DICOM file makes the second view cost one read.
"""

import logging
from collections.abc import Sequence
from typing import BinaryIO, cast

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from viewbox.records.models import Instance
from viewbox.viewer.rendering import render_jpeg, render_jpegs

logger = logging.getLogger(__name__)


def _cache_name(instance: Instance, frame: int, edge: int) -> str:
    return f"renders/{instance.pk}/{frame}-{edge}.jpg"


def preview_jpeg(instance: Instance, frame: int, edge: int) -> bytes:
    """Return the JPEG of one frame scaled to fit ``edge``, rendering it once.

    Raises RenderError when the stored file cannot be rendered.
    """
    name = _cache_name(instance, frame, edge)
    if default_storage.exists(name):
        with default_storage.open(name, "rb") as cached:
            return cached.read()

    with default_storage.open(instance.file, "rb") as stream:
        jpeg = render_jpeg(
            cast(BinaryIO, stream),
            frame=frame,
            max_edge=edge,
            quality=settings.RENDER_JPEG_QUALITY,
        )
    _store(name, jpeg)
    return jpeg


def warm_previews(instance: Instance, frame: int, edges: Sequence[int]) -> None:
    """Render and store every edge of one frame that is not cached yet.

    All of them come from one decode of the frame, and preview_jpeg serves
    them afterwards under the same names. Raises RenderError when the stored
    file cannot be rendered.
    """
    missing = [
        edge
        for edge in dict.fromkeys(edges)
        if not default_storage.exists(_cache_name(instance, frame, edge))
    ]
    if not missing:
        return

    with default_storage.open(instance.file, "rb") as stream:
        jpegs = render_jpegs(
            cast(BinaryIO, stream), frame, missing, quality=settings.RENDER_JPEG_QUALITY
        )
    for edge in missing:
        _store(_cache_name(instance, frame, edge), jpegs[edge])


def _store(name: str, jpeg: bytes) -> None:
    saved = default_storage.save(name, ContentFile(jpeg))
    # Two requests may render the same frame at once; the loser's copy got
    # another name from the storage and is not needed.
    if saved != name:
        default_storage.delete(saved)
