import hashlib
import json
from datetime import date
from pathlib import Path

import pydicom
import pytest
from django.test import Client

from viewbox.conftest import make_exam, make_patient
from viewbox.ingest.models import QuarantinedFile
from viewbox.ingest.tests.test_dicom_import import CT, write_copy
from viewbox.records.models import Instance

TOKEN = "stow-test-token-0123456789"
BOUNDARY = "viewbox-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(*parts: bytes, content_type: str = "application/dicom") -> bytes:
    body = b"preamble, ignored\r\n"
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        body += part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def post(
    client: Client,
    body: bytes,
    *,
    token: str | None = TOKEN,
    url: str = "/dicomweb/studies",
    **extra,
):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(
        url,
        body,
        content_type=extra.pop("content_type", CONTENT_TYPE),
        headers=headers,
        **extra,
    )


@pytest.fixture(autouse=True)
def stow_token(settings) -> None:
    settings.STOW_TOKEN_SHA256 = [
        hashlib.sha256(b"another-operator-token").hexdigest(),
        hashlib.sha256(TOKEN.encode()).hexdigest(),
    ]


@pytest.fixture
def alice_exam(california):
    alice = make_patient(
        california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
    )
    return make_exam(alice, california, "ACC1001")


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    return write_copy(CT, tmp_path / "in" / "ct.dcm", "DEMO-1001", "ACC1001")


def sequence(response, tag: str) -> list[dict]:
    return response.json().get(tag, {}).get("Value", [])


@pytest.mark.django_db
class TestStowAuthentication:
    def test_request_without_token_is_refused(self, ct_file) -> None:
        response = post(Client(), multipart(ct_file.read_bytes()), token=None)
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Bearer realm="dicomweb"'
        assert Instance.objects.count() == 0

    def test_request_with_wrong_token_is_refused(self, ct_file) -> None:
        response = post(Client(), multipart(ct_file.read_bytes()), token="guessed")
        assert response.status_code == 401
        assert Instance.objects.count() == 0

    def test_basic_authorization_is_refused(self, ct_file) -> None:
        response = Client().post(
            "/dicomweb/studies",
            multipart(ct_file.read_bytes()),
            content_type=CONTENT_TYPE,
            headers={"Authorization": f"Basic {TOKEN}"},
        )
        assert response.status_code == 401

    def test_no_token_configured_refuses_every_request(self, settings, ct_file) -> None:
        settings.STOW_TOKEN_SHA256 = []
        response = post(Client(), multipart(ct_file.read_bytes()))
        assert response.status_code == 401

    def test_get_is_not_allowed(self) -> None:
        response = Client().get(
            "/dicomweb/studies", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 405

    def test_right_token_stores_without_csrf_token(self, alice_exam, ct_file) -> None:
        client = Client(enforce_csrf_checks=True)
        response = post(client, multipart(ct_file.read_bytes()))
        assert response.status_code == 200
        assert response["Content-Type"] == "application/dicom+json"
        ds = pydicom.dcmread(ct_file)
        assert sequence(response, "00081199") == [
            {
                "00081150": {"vr": "UI", "Value": [ds.SOPClassUID]},
                "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
            }
        ]
        instance = Instance.objects.get()
        assert instance.sop_instance_uid == ds.SOPInstanceUID
        assert instance.series.study.exam == alice_exam

    def test_missing_token_is_refused_before_csrf(self, ct_file) -> None:
        client = Client(enforce_csrf_checks=True)
        response = post(client, multipart(ct_file.read_bytes()), token=None)
        assert response.status_code == 401


@pytest.mark.django_db
class TestStowBody:
    def test_wrong_media_type_is_refused(self, ct_file) -> None:
        response = post(
            Client(), ct_file.read_bytes(), content_type="application/dicom"
        )
        assert response.status_code == 415
        assert Instance.objects.count() == 0

    def test_multipart_of_other_type_is_refused(self, ct_file) -> None:
        response = post(
            Client(),
            multipart(ct_file.read_bytes()),
            content_type=CONTENT_TYPE.replace("dicom", "dicom+xml"),
        )
        assert response.status_code == 415

    @pytest.mark.parametrize(
        "content_type",
        [
            'multipart/related; type="application/dicom"',
            'multipart/related; type="application/dicom"; boundary=""',
            'multipart/related; boundary=""; type="application/dicom"',
        ],
    )
    def test_missing_boundary_parameter_is_rejected(
        self, ct_file, content_type, caplog
    ) -> None:
        response = post(
            Client(), multipart(ct_file.read_bytes()), content_type=content_type
        )
        assert response.status_code == 400
        assert response.content == (
            b"Missing boundary parameter in the Content-Type: send "
            b'multipart/related; type="application/dicom"; boundary=BOUNDARY.'
        )
        assert Instance.objects.count() == 0
        assert "Refused a STOW-RS request without a multipart boundary" in (caplog.text)

    def test_body_over_limit_is_refused(self, settings, ct_file) -> None:
        settings.STOW_MAX_REQUEST_BYTES = 1000
        response = post(Client(), multipart(ct_file.read_bytes()))
        assert response.status_code == 413
        assert Instance.objects.count() == 0

    def test_body_without_boundary_is_refused(self) -> None:
        response = post(Client(), b"no parts here")
        assert response.status_code == 400
        assert (
            response.content
            == b"Malformed multipart body: no multipart boundary found in the body."
        )

    def test_truncated_body_is_refused(self, ct_file) -> None:
        body = multipart(ct_file.read_bytes())
        response = post(Client(), body[: len(body) // 2])
        assert response.status_code == 400
        assert (
            response.content
            == b"Malformed multipart body: the body ends inside a part."
        )
        assert Instance.objects.count() == 0

    def test_bad_part_gives_partial_failure(self, alice_exam, ct_file) -> None:
        response = post(Client(), multipart(ct_file.read_bytes(), b"not a DICOM file"))
        assert response.status_code == 202
        assert len(sequence(response, "00081199")) == 1
        assert sequence(response, "00081198") == [
            {"00081197": {"vr": "US", "Value": [0xC000]}}
        ]
        assert Instance.objects.count() == 1
        kept = QuarantinedFile.objects.get()
        assert kept.reason.startswith("not a DICOM file")
        assert kept.original_name.startswith("STOW-RS part ")
        assert Path(kept.path).read_bytes() == b"not a DICOM file"

    def test_only_bad_parts_give_conflict(self) -> None:
        response = post(Client(), multipart(b"not a DICOM file"))
        assert response.status_code == 409
        assert "00081199" not in response.json()

    def test_part_of_other_content_type_fails(self, ct_file) -> None:
        response = post(
            Client(), multipart(ct_file.read_bytes(), content_type="text/plain")
        )
        assert response.status_code == 409
        assert sequence(response, "00081198")[0]["00081197"]["Value"] == [0xC000]
        assert QuarantinedFile.objects.get().reason == "part is not application/dicom"

    def test_instance_of_other_study_fails_on_study_url(self, ct_file) -> None:
        response = post(
            Client(), multipart(ct_file.read_bytes()), url="/dicomweb/studies/1.2.3.4"
        )
        assert response.status_code == 409
        failed = sequence(response, "00081198")[0]
        assert failed["00081197"]["Value"] == [0xA900]
        assert failed["00081155"]["Value"] == [pydicom.dcmread(ct_file).SOPInstanceUID]
        assert Instance.objects.count() == 0

    def test_instance_of_named_study_is_stored(self, ct_file) -> None:
        study = pydicom.dcmread(ct_file).StudyInstanceUID
        response = post(
            Client(), multipart(ct_file.read_bytes()), url=f"/dicomweb/studies/{study}"
        )
        assert response.status_code == 200
        assert Instance.objects.count() == 1

    def test_resend_is_stored_once(self, ct_file) -> None:
        first = post(Client(), multipart(ct_file.read_bytes()))
        second = post(Client(), multipart(ct_file.read_bytes()))
        assert first.status_code == 200
        assert second.status_code == 200
        assert Instance.objects.count() == 1

    def test_unsupported_sop_class_fails(self, tmp_path) -> None:
        path = write_copy(CT, tmp_path / "raw.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = (
            "1.2.840.10008.5.1.4.1.1.66"
        )
        ds.save_as(path, enforce_file_format=True)
        response = post(Client(), multipart(path.read_bytes()))
        assert response.status_code == 409
        assert sequence(response, "00081198")[0]["00081197"]["Value"] == [0x0122]

    def test_response_body_is_dicom_json(self, ct_file) -> None:
        response = post(Client(), multipart(ct_file.read_bytes(), b"junk"))
        body = json.loads(response.content)
        assert set(body) == {"00081198", "00081199"}
        assert body["00081198"]["vr"] == "SQ"


@pytest.mark.django_db
class TestStowResponseUids:
    def test_invalid_instance_uid_is_not_returned(self, tmp_path) -> None:
        path = write_copy(
            CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001", sop="Testpatient^Alice"
        )
        response = post(Client(), multipart(path.read_bytes()))
        assert response.status_code == 409
        assert sequence(response, "00081198") == [
            {
                "00081150": {"vr": "UI", "Value": [pydicom.dcmread(path).SOPClassUID]},
                "00081155": {"vr": "UI"},
                "00081197": {"vr": "US", "Value": [0xC000]},
            }
        ]
        assert b"Testpatient" not in response.content

    def test_invalid_class_uid_is_not_returned(self, tmp_path) -> None:
        path = write_copy(CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "Testpatient^Alice"
        ds.save_as(path, enforce_file_format=True)
        response = post(Client(), multipart(path.read_bytes()))
        assert response.status_code == 409
        assert sequence(response, "00081198") == [
            {
                "00081150": {"vr": "UI"},
                "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
                "00081197": {"vr": "US", "Value": [0x0122]},
            }
        ]
        assert b"Testpatient" not in response.content
        assert QuarantinedFile.objects.get().reason == (
            "SOPClassUID (not a valid UID) is not a supported storage class"
        )

    def test_overlong_instance_uid_is_not_returned(self, tmp_path) -> None:
        overlong = "1.2." * 20 + "3"
        path = write_copy(CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001", sop=overlong)
        response = post(Client(), multipart(path.read_bytes()))
        assert response.status_code == 409
        [failed] = sequence(response, "00081198")
        assert failed["00081155"] == {"vr": "UI"}
        assert overlong.encode() not in response.content

    def test_valid_uids_of_failed_part_are_returned(self, ct_file) -> None:
        response = post(
            Client(), multipart(ct_file.read_bytes()), url="/dicomweb/studies/1.2.3.4"
        )
        ds = pydicom.dcmread(ct_file)
        assert sequence(response, "00081198") == [
            {
                "00081150": {"vr": "UI", "Value": [ds.SOPClassUID]},
                "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
                "00081197": {"vr": "US", "Value": [0xA900]},
            }
        ]
