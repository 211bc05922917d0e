"""Tests of the render cache and the task that fills it after an import."""

import io
import logging
from pathlib import Path
from typing import Any
from unittest import mock

import pydicom
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image
from pydicom.uid import generate_uid

from viewbox.conftest import package_path
from viewbox.ingest.dicom_import import import_dicom_file
from viewbox.records.models import Instance
from viewbox.viewer import previews
from viewbox.viewer.previews import preview_jpeg, warm_previews
from viewbox.viewer.tasks import render_previews

# A JPEG 2000 chest CR of 1841x1955 pixels, slow enough to decode that the
# portal renders it ahead.
CR_FILE = package_path("data_store", "data/RG1_J2KR.dcm")
MR_FILE = package_path("pydicom", "data/test_files/MR_small.dcm")
FAKE_PATIENT_NAME = "Testpatient^Alice"


def import_copy(source: Path, tmp_path: Path, **elements: object) -> Instance:
    """Import a copy of a real file with fresh UIDs and a fake patient."""
    ds = pydicom.dcmread(source)
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = "DEMO-1001"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = import_dicom_file(path)
    assert result.instance is not None
    return result.instance


def cache_name(instance: Instance, frame: int, edge: int) -> str:
    return f"renders/{instance.pk}/{frame}-{edge}.jpg"


def stored_size(name: str) -> tuple[int, int]:
    with default_storage.open(name, "rb") as stored:
        image = Image.open(io.BytesIO(stored.read()))
        assert image.format == "JPEG"
        return image.size


def task_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "viewbox.viewer.tasks"
    ]


def render_files(instance: Instance) -> list[str]:
    _, names = default_storage.listdir(f"renders/{instance.pk}")
    return sorted(names)


@pytest.mark.django_db
class TestWarmPreviews:
    def test_missing_edges_are_stored(self, tmp_path: Path) -> None:
        instance = import_copy(CR_FILE, tmp_path)

        warm_previews(instance, frame=0, edges=[256, 512, 1024])

        assert render_files(instance) == ["0-1024.jpg", "0-256.jpg", "0-512.jpg"]
        assert stored_size(cache_name(instance, 0, 256)) == (241, 256)
        assert stored_size(cache_name(instance, 0, 512)) == (482, 512)
        assert stored_size(cache_name(instance, 0, 1024)) == (964, 1024)

    def test_missing_edges_share_one_render(self, tmp_path: Path) -> None:
        instance = import_copy(CR_FILE, tmp_path)
        default_storage.save(cache_name(instance, 0, 512), ContentFile(b"cached"))

        with mock.patch.object(
            previews, "render_jpegs", wraps=previews.render_jpegs
        ) as render_jpegs:
            warm_previews(instance, frame=0, edges=[256, 512, 1024, 256])

        assert render_jpegs.call_count == 1
        assert render_jpegs.call_args.args[1:] == (0, [256, 1024])

    def test_cached_edge_is_not_rendered_again(self, tmp_path: Path) -> None:
        instance = import_copy(CR_FILE, tmp_path)
        default_storage.save(cache_name(instance, 0, 512), ContentFile(b"cached"))

        warm_previews(instance, frame=0, edges=[256, 512])

        with default_storage.open(cache_name(instance, 0, 512), "rb") as stored:
            assert stored.read() == b"cached"
        assert render_files(instance) == ["0-256.jpg", "0-512.jpg"]

    def test_preview_is_served_without_dicom_file(self, tmp_path: Path) -> None:
        instance = import_copy(CR_FILE, tmp_path)
        warm_previews(instance, frame=0, edges=[256, 512, 1024])
        with default_storage.open(cache_name(instance, 0, 512), "rb") as stored:
            warmed = stored.read()

        default_storage.delete(instance.file)
        assert not default_storage.exists(instance.file)

        assert preview_jpeg(instance, frame=0, edge=512) == warmed
        warm_previews(instance, frame=0, edges=[256, 512, 1024])

    def test_preview_matches_warmed_file(self, tmp_path: Path) -> None:
        warmed_instance = import_copy(MR_FILE, tmp_path)
        single_instance = import_copy(MR_FILE, tmp_path)

        warm_previews(warmed_instance, frame=0, edges=[32])
        with default_storage.open(cache_name(warmed_instance, 0, 32), "rb") as stored:
            warmed = stored.read()

        assert preview_jpeg(single_instance, frame=0, edge=32) == warmed

    def test_concurrent_render_leaves_one_file(self, tmp_path: Path) -> None:
        instance = import_copy(MR_FILE, tmp_path)
        name = cache_name(instance, 0, 32)
        render_jpegs = previews.render_jpegs

        def render_while_another_worker_stores(
            *args: Any, **kwargs: Any
        ) -> dict[int | None, bytes]:
            default_storage.save(name, ContentFile(b"other"))
            return render_jpegs(*args, **kwargs)

        with mock.patch.object(
            previews, "render_jpegs", side_effect=render_while_another_worker_stores
        ):
            warm_previews(instance, frame=0, edges=[32])

        assert render_files(instance) == ["0-32.jpg"]
        with default_storage.open(name, "rb") as stored:
            assert stored.read() == b"other"


@pytest.mark.django_db
class TestRenderPreviewsTask:
    def test_tile_and_smaller_views_are_stored(self, tmp_path: Path) -> None:
        instance = import_copy(CR_FILE, tmp_path)

        render_previews.call(instance.pk)

        assert render_files(instance) == ["0-1024.jpg", "0-256.jpg", "0-512.jpg"]

    def test_unrenderable_file_is_logged(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        instance = import_copy(MR_FILE, tmp_path, PhotometricInterpretation="HSV")
        assert instance.has_pixels

        with caplog.at_level(logging.WARNING, logger="viewbox.viewer.tasks"):
            render_previews.call(instance.pk)

        assert task_messages(caplog) == [
            f"Cannot render instance {instance.pk}: (0028,0004) Photometric "
            "Interpretation 'HSV' is not supported"
        ]
        assert "Testpatient" not in caplog.text
        assert not default_storage.exists(f"renders/{instance.pk}")

    def test_missing_instance_is_skipped(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="viewbox.viewer.tasks"):
            render_previews.call(999_999)

        assert task_messages(caplog) == []
