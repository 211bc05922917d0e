"""Rendered JPEGs of stored images, kept in storage once made.

Rendering a mammogram takes a fraction of a second; a cache file beside the
DICOM file makes the second view cost one read.
"""

import logging
from typing import BinaryIO, cast

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from viewbox.records.models import Instance
from viewbox.viewer.rendering import render_jpeg

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
        jpeg = render_jpeg(cast(BinaryIO, stream), frame=frame, max_edge=edge)

    saved = default_storage.save(name, ContentFile(jpeg))
    # Two requests may render the same frame at once; the loser's copy got
    # another name from the storage and is not needed.
    if saved != name:
        default_storage.delete(saved)
    return jpeg
