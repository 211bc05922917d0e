"""Every URL that shows patient data returns 404 outside the requester's scope."""

import shutil
from datetime import date

import pytest
from django.test import Client
from django.urls import reverse

from viewbox.access.actions import issue_icode
from viewbox.conftest import make_exam, make_patient, package_path
from viewbox.ingest.dicom_import import import_dicom_file
from viewbox.records.models import Exam, Instance

CT_FILE = package_path("data_store", "data/693_UNCI.dcm")


def import_ct_for(exam: Exam, tmp_path, name: str) -> Instance:
    """Import the real CT slice with the exam's identifiers and fresh UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(CT_FILE)
    ds.PatientID = exam.visit.patient.mrn
    ds.AccessionNumber = exam.accession_number
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    result = import_dicom_file(path)
    assert result.instance is not None
    return result.instance


def exam_urls(exam: Exam, instance: Instance | None) -> list[str]:
    urls = [
        reverse("viewer:exam_summary", args=[exam.public_id]),
        reverse("viewer:exam_report", args=[exam.public_id]),
        reverse("viewer:exam_report_print", args=[exam.public_id]),
        reverse("viewer:exam_images", args=[exam.public_id]),
    ]
    if instance is not None:
        urls += [
            reverse("viewer:image_view", args=[exam.public_id, instance.public_id]),
            reverse(
                "viewer:image_jpeg", args=[exam.public_id, instance.public_id, 1, 256]
            ),
        ]
    return urls


@pytest.fixture
def two_visits(california, tmp_path):
    """Alice has two visits; her I-Code opens the first only. Bob is someone else."""
    alice = make_patient(
        california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
    )
    bob = make_patient(california, "DEMO-2001", "Bob", "Sample", date(1975, 9, 30))
    mine = make_exam(alice, california, "ACC1", day=date(2026, 11, 20))
    my_other_visit = make_exam(alice, california, "ACC2", day=date(2026, 10, 1))
    bobs = make_exam(bob, california, "ACC3", day=date(2026, 11, 20))
    instances = {
        exam.accession_number: import_ct_for(
            exam, tmp_path, f"{exam.accession_number}.dcm"
        )
        for exam in (mine, my_other_visit, bobs)
    }
    _, code = issue_icode(mine.visit)
    client = Client()
    response = client.post(
        reverse("viewer:icode_sign_in", args=[california.group.slug, california.slug]),
        {
            "code": code,
            "birth_date_month": 4,
            "birth_date_day": 12,
            "birth_date_year": 1980,
        },
    )
    assert response.status_code == 302
    return client, mine, my_other_visit, bobs, instances


@pytest.mark.django_db
class TestOutsideScope:
    def test_other_patients_exam_not_found(self, two_visits) -> None:
        client, _, _, bobs, instances = two_visits
        for url in exam_urls(bobs, instances["ACC3"]):
            assert client.get(url).status_code == 404, url

    def test_same_patients_other_visit_is_not_found(self, two_visits) -> None:
        client, _, other, _, instances = two_visits
        for url in exam_urls(other, instances["ACC2"]):
            assert client.get(url).status_code == 404, url

    def test_other_exams_image_not_found(self, two_visits) -> None:
        client, mine, _, _, instances = two_visits
        for accession in ("ACC2", "ACC3"):
            instance = instances[accession]
            urls = [
                reverse("viewer:image_view", args=[mine.public_id, instance.public_id]),
                reverse(
                    "viewer:image_jpeg",
                    args=[mine.public_id, instance.public_id, 1, 256],
                ),
            ]
            for url in urls:
                assert client.get(url).status_code == 404, url

    def test_made_up_and_malformed_ids_are_not_found(self, two_visits) -> None:
        client, mine, _, _, _ = two_visits
        for exam_id in (
            "00000000-0000-0000-0000-000000000000",
            "1",
            "../../etc/passwd",
            "%00",
        ):
            assert client.get(f"/exams/{exam_id}/").status_code == 404
        assert (
            client.get(f"/exams/{mine.public_id}/images/{mine.pk}/").status_code == 404
        )

    def test_other_exams_are_not_listed(self, two_visits) -> None:
        client, mine, other, bobs, _ = two_visits
        page = client.get(reverse("viewer:exam_list"), follow=True).content.decode()
        assert str(mine.public_id) in page
        assert str(other.public_id) not in page
        assert str(bobs.public_id) not in page

    def test_unsupported_image_size_is_not_found(self, two_visits) -> None:
        client, mine, _, _, instances = two_visits
        url = reverse(
            "viewer:image_jpeg",
            args=[mine.public_id, instances["ACC1"].public_id, 1, 300],
        )
        assert client.get(url).status_code == 404

    def test_frame_beyond_the_image_is_not_found(self, two_visits) -> None:
        client, mine, _, _, instances = two_visits
        url = reverse(
            "viewer:image_jpeg",
            args=[mine.public_id, instances["ACC1"].public_id, 2, 256],
        )
        assert client.get(url).status_code == 404

    def test_anonymous_visitor_is_sent_to_the_start(self, two_visits) -> None:
        _, mine, _, _, instances = two_visits
        for url in exam_urls(mine, instances["ACC1"]):
            response = Client().get(url)
            assert response.status_code == 302, url
            assert response["Location"] == reverse("viewer:start")


@pytest.mark.django_db
class TestImagesBeforeCompletion:
    def test_images_before_completion_not_found(self, two_visits) -> None:
        client, mine, _, _, instances = two_visits
        Exam.objects.filter(pk=mine.pk).update(status=Exam.Status.IN_PROGRESS)
        for url in exam_urls(mine, instances["ACC1"])[-2:]:
            assert client.get(url).status_code == 404, url
        page = client.get(
            reverse("viewer:exam_images", args=[mine.public_id])
        ).content.decode()
        assert "Images appear here as soon as your exam is completed." in page

    def test_cancelled_exam_is_not_listed(self, two_visits) -> None:
        client, mine, _, _, _ = two_visits
        Exam.objects.filter(pk=mine.pk).update(status=Exam.Status.CANCELLED)
        assert (
            client.get(
                reverse("viewer:exam_summary", args=[mine.public_id])
            ).status_code
            == 404
        )


@pytest.mark.django_db
class TestOwnImages:
    def test_tile_is_a_jpeg_of_tile_size(self, two_visits) -> None:
        from io import BytesIO

        from PIL import Image

        client, mine, _, _, instances = two_visits
        url = reverse(
            "viewer:image_jpeg",
            args=[mine.public_id, instances["ACC1"].public_id, 1, 256],
        )
        response = client.get(url)
        assert response.status_code == 200
        assert response["Content-Type"] == "image/jpeg"
        assert response["Cache-Control"] == "no-store"
        image = Image.open(BytesIO(response.content))
        assert image.format == "JPEG"
        assert image.size == (256, 256)

    def test_second_request_is_served_from_the_render_cache(
        self, two_visits, isolated_files
    ) -> None:
        client, mine, _, _, instances = two_visits
        url = reverse(
            "viewer:image_jpeg",
            args=[mine.public_id, instances["ACC1"].public_id, 1, 512],
        )
        first = client.get(url).content
        shutil.rmtree(isolated_files / "media" / "dicom")
        assert client.get(url).content == first
