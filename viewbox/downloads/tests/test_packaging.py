"""Tests of build_package on real DICOM files from installed packages.

The refused cases come first. Then the packages of one fake exam are
checked with dcmtk, dicom3tools, pydicom, xorriso and chromium. No Django
database is needed.
"""

import errno
import io
import re
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from viewbox.browser_fixtures import needs_chromium
from viewbox.conftest import package_path, replace_is_value
from viewbox.downloads.dicomdir import DicomDirectory, read_header
from viewbox.downloads.iso_writer import IsoPackageWriter
from viewbox.downloads.packaging import (
    PackageError,
    PackageImage,
    PackageInfo,
    PackageSpaceError,
    build_package,
)
from viewbox.downloads.zip_writer import ZipPackageWriter
from viewbox.viewer.rendering import render_jpeg

CT = package_path("data_store", "data/693_UNCI.dcm")
US_120_FRAMES = package_path("data_store", "data/color3d_jpeg_baseline.dcm")
MR_IMPLICIT_VR = package_path("pydicom", "data/test_files/MR_small_implicit.dcm")
SR = package_path("pydicom", "data/test_files/test-SR.dcm")
MAMMOGRAM = sorted(package_path("mammograms", "cases").glob("*/*.dcm"))[0]

SCRIPT = "<script>alert(1)</script>"
INFO = PackageInfo(
    title=f"CT HEAD WITHOUT CONTRAST {SCRIPT}",
    subtitle="December 1, 2026 · Towson Imaging Center",
    patient_name=f"Sample, Barbara {SCRIPT}",
)
REPORT = b"%PDF-1.4\n% a fake report for tests\n%%EOF\n"
SHORT_NAME = re.compile(r"^[A-Z0-9_]{1,8}$")
VIEWER_EDGE = 256

needs_tool = {
    name: pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} is missing")
    for name in ("dciodvfy", "dcmdump", "xorriso", "isoinfo")
}


def exam_copy(
    source: Path, folder: Path, study_uid: str, series_uid: str, number: int
) -> Path:
    """Copy a file into one fake patient's study, with a fresh SOP Instance UID."""
    dataset = pydicom.dcmread(source)
    dataset.PatientName = "SAMPLE^BARBARA"
    dataset.PatientID = "VBX-TEST-0001"
    dataset.StudyInstanceUID = study_uid
    dataset.StudyDate = "20261201"
    dataset.StudyTime = "093000"
    dataset.StudyID = "1"
    dataset.AccessionNumber = "TESTACC0001"
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = number
    dataset.InstanceNumber = number
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    copy = folder / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(copy)
    return copy


def package_image(
    path: Path, series_key: int, label: str, frames: int = 1, number: int | None = 1
) -> PackageImage:
    return PackageImage(
        open_file=lambda: path.open("rb"),
        size=path.stat().st_size,
        series_key=series_key,
        series_label=label,
        instance_number=number,
        number_of_frames=frames,
    )


def render_small(image: PackageImage, frame: int) -> bytes:
    with image.open_file() as file:
        return render_jpeg(file, frame, max_edge=VIEWER_EDGE)


def tiny_jpeg(image: PackageImage, frame: int) -> bytes:
    return render_jpeg(CT, 0, max_edge=16)


def folder_entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def extract_zip(archive: Path, folder: Path) -> Path:
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    return folder


def extract_iso(image: Path, folder: Path) -> Path:
    subprocess.run(
        [
            "xorriso",
            "-osirrox",
            "on",
            "-indev",
            str(image),
            "-extract",
            "/",
            str(folder),
        ],
        check=True,
        capture_output=True,
    )
    # Rock Ridge marks the files read-only, as on a disc.
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def one_ct(tmp_path: Path) -> list[PackageImage]:
    source = tmp_path / "sources"
    source.mkdir()
    study, series = generate_uid(), generate_uid()
    return [
        package_image(
            exam_copy(CT, source, study, series, number), 1, "CT", number=number
        )
        for number in (1, 2)
    ]


@pytest.fixture
def output(tmp_path: Path) -> Path:
    folder = tmp_path / "packages"
    folder.mkdir()
    return folder


class TestRejectedImages:
    def test_non_dicom_file_is_rejected(self, one_ct, output, tmp_path) -> None:
        text = tmp_path / "notes.txt"
        text.write_text("Not an image. " * 50)
        images = [*one_ct, package_image(text, 1, "CT")]

        with pytest.raises(PackageError) as raised:
            build_package(images, INFO, None, "zip", output / "exam.zip", tiny_jpeg)

        assert str(raised.value) == (
            "Image 3 (DICOM/S0000001/I0000003) cannot be packaged: it is not a "
            "readable DICOM Part 10 file (InvalidDicomError)"
        )
        assert folder_entries(output) == []

    def test_exam_without_images_is_rejected(self, output) -> None:
        with pytest.raises(PackageError) as raised:
            build_package([], INFO, None, "zip", output / "exam.zip", tiny_jpeg)

        assert str(raised.value) == "The package would hold no DICOM files"
        assert folder_entries(output) == []

    def test_same_instance_twice_is_rejected(self, one_ct, output) -> None:
        images = [one_ct[0], one_ct[0]]

        with pytest.raises(PackageError) as raised:
            build_package(images, INFO, None, "iso", output / "exam.iso", tiny_jpeg)

        with one_ct[0].open_file() as file:
            uid = pydicom.dcmread(file).SOPInstanceUID
        assert str(raised.value) == (
            "Image 2 (DICOM/S0000001/I0000002) cannot be packaged: (0002,0003) "
            f"Media Storage SOP Instance UID {uid} is already in the package"
        )
        assert folder_entries(output) == []

    def test_missing_series_uid_is_rejected(self, output, tmp_path) -> None:
        dataset = pydicom.dcmread(CT)
        del dataset.SeriesInstanceUID
        path = tmp_path / "no-series.dcm"
        dataset.save_as(path)

        with pytest.raises(PackageError) as raised:
            build_package(
                [package_image(path, 1, "CT")],
                INFO,
                None,
                "zip",
                output / "a.zip",
                tiny_jpeg,
            )

        assert str(raised.value) == (
            "Image 1 (DICOM/S0000001/I0000001) cannot be packaged: (0020,000E) "
            "Series Instance UID is missing or empty"
        )

    @pytest.mark.parametrize("fmt", ["zip", "iso"])
    def test_file_shorter_than_its_size_is_rejected(self, one_ct, output, fmt) -> None:
        first = one_ct[0]
        declared = PackageImage(
            first.open_file, first.size + 10, 1, "CT", 1, first.number_of_frames
        )

        with pytest.raises(PackageError) as raised:
            build_package(
                [declared], INFO, None, fmt, output / f"exam.{fmt}", tiny_jpeg
            )

        assert str(raised.value) == (
            "A stored file changed size: DICOM/S0000001/I0000001 contains "
            f"{first.size} bytes, but {first.size + 10} were declared"
        )
        assert folder_entries(output) == []

    @pytest.mark.parametrize("fmt", ["zip", "iso"])
    def test_file_longer_than_its_size_is_rejected(self, one_ct, output, fmt) -> None:
        first = one_ct[0]
        declared = PackageImage(first.open_file, first.size - 2, 1, "CT", 1, 1)

        with pytest.raises(PackageError) as raised:
            build_package(
                [declared], INFO, None, fmt, output / f"exam.{fmt}", tiny_jpeg
            )

        assert "DICOM/S0000001/I0000001 contains more than" in str(raised.value)
        assert folder_entries(output) == []

    def test_file_of_4_gib_is_rejected_for_iso(self, one_ct, output) -> None:
        first = one_ct[0]
        huge = PackageImage(first.open_file, 1 << 32, 1, "CT", 1, 1)

        with pytest.raises(PackageError) as raised:
            build_package([huge], INFO, None, "iso", output / "exam.iso", tiny_jpeg)

        assert str(raised.value) == (
            "pycdlib could not write the image: File sizes for interchange level "
            "< 3 must be less than 4GiB"
        )
        assert folder_entries(output) == []

    def test_unknown_format_is_rejected(self, one_ct, output) -> None:
        with pytest.raises(ValueError, match="fmt must be 'zip' or 'iso', not 'tar'"):
            build_package(one_ct, INFO, None, "tar", output / "exam.tar", tiny_jpeg)


class TestInstanceCountCheck:
    @pytest.mark.parametrize(
        ("fmt", "writer"), [("zip", ZipPackageWriter), ("iso", IsoPackageWriter)]
    )
    def test_lost_dicom_file_fails_the_check(
        self, one_ct, output, monkeypatch, fmt, writer
    ) -> None:
        add_file = writer.add_file

        def add_all_but_the_second(
            self, name: str, size: int, open_file: Callable
        ) -> None:
            if name != "DICOM/S0000001/I0000002":
                add_file(self, name, size, open_file)

        monkeypatch.setattr(writer, "add_file", add_all_but_the_second)

        with pytest.raises(PackageError) as raised:
            build_package(one_ct, INFO, None, fmt, output / f"exam.{fmt}", tiny_jpeg)

        assert str(raised.value) == (
            "The written package contains 1 DICOM files and 2 DICOMDIR records, but "
            "2 instances were requested"
        )
        assert folder_entries(output) == []

    def test_lost_dicomdir_record_fails_the_check(
        self, one_ct, output, monkeypatch
    ) -> None:
        add = DicomDirectory.add

        def add_all_but_the_second(self, file_id, header) -> None:
            if file_id[-1] != "I0000002":
                add(self, file_id, header)

        monkeypatch.setattr(DicomDirectory, "add", add_all_but_the_second)

        with pytest.raises(PackageError) as raised:
            build_package(one_ct, INFO, None, "zip", output / "exam.zip", tiny_jpeg)

        assert str(raised.value) == (
            "The written package contains 2 DICOM files and 1 DICOMDIR records, but "
            "2 instances were requested"
        )
        assert folder_entries(output) == []


class TestFullDisk:
    @pytest.mark.parametrize("fmt", ["zip", "iso"])
    def test_full_disk_while_rendering_raises(self, one_ct, output, fmt) -> None:
        def render_on_full_disk(image: PackageImage, frame: int) -> bytes:
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.raises(PackageSpaceError) as raised:
            build_package(
                one_ct, INFO, None, fmt, output / f"exam.{fmt}", render_on_full_disk
            )

        assert str(raised.value) == (
            f"No space is left: the {fmt} package could not be written in {output} "
            "(No space left on device)"
        )
        assert folder_entries(output) == []

    def test_full_disk_while_copying_raises(self, one_ct, output, monkeypatch) -> None:
        def copy_on_full_disk(self, name: str, size: int, open_file: Callable) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ZipPackageWriter, "add_file", copy_on_full_disk)

        with pytest.raises(PackageSpaceError):
            build_package(one_ct, INFO, None, "zip", output / "exam.zip", tiny_jpeg)

        assert folder_entries(output) == []

    def test_full_disk_while_writing_iso_raises(
        self, one_ct, output, monkeypatch
    ) -> None:
        def write_on_full_disk(self, file, progress=None) -> None:
            file.write(b"\0" * 4096)
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

        monkeypatch.setattr(IsoPackageWriter, "write_to", write_on_full_disk)

        with pytest.raises(PackageSpaceError):
            build_package(one_ct, INFO, None, "iso", output / "exam.iso", tiny_jpeg)

        assert folder_entries(output) == []

    def test_interrupted_build_leaves_nothing_behind(self, one_ct, output) -> None:
        def interrupted(image: PackageImage, frame: int) -> bytes:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            build_package(one_ct, INFO, None, "zip", output / "exam.zip", interrupted)

        assert folder_entries(output) == []

    def test_failed_build_keeps_the_previous_package(self, one_ct, output) -> None:
        target = output / "exam.zip"
        target.write_bytes(b"the previous package")

        def render_on_full_disk(image: PackageImage, frame: int) -> bytes:
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.raises(PackageSpaceError):
            build_package(one_ct, INFO, None, "zip", target, render_on_full_disk)

        assert folder_entries(output) == ["exam.zip"]
        assert target.read_bytes() == b"the previous package"


class TestUntrustedText:
    @pytest.fixture
    def built(self, one_ct, output) -> dict[str, bytes]:
        labelled = [
            PackageImage(image.open_file, image.size, 1, f"CT · {SCRIPT}", 1, 1)
            for image in one_ct
        ]
        build_package(labelled, INFO, REPORT, "zip", output / "exam.zip", tiny_jpeg)
        with zipfile.ZipFile(output / "exam.zip") as archive:
            return {name: archive.read(name) for name in ("INDEX.HTM", "README.TXT")}

    def test_script_is_escaped_in_index(self, built) -> None:
        page = built["INDEX.HTM"].decode("utf-8")

        assert SCRIPT not in page
        assert "<script>alert" not in page
        assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4

    def test_script_is_neutralised_in_readme(self, built) -> None:
        readme = built["README.TXT"].decode("utf-8-sig")

        assert "<script>" not in readme
        assert (
            "Patient: Sample, Barbara \u2039script\u203aalert(1)\u2039/script\u203a"
            in readme
        )
        assert "Exam: CT HEAD WITHOUT CONTRAST \u2039script\u203a" in readme
        assert (
            "CT · \u2039script\u203aalert(1)\u2039/script\u203a: 2 DICOM files"
            in readme
        )

    def test_line_breaks_cannot_add_readme_lines(self, one_ct, output) -> None:
        info = PackageInfo("CT\r\nDICOMDIR     forged line", "", "Sample\u202eBarbara")

        build_package(one_ct, info, None, "zip", output / "exam.zip", tiny_jpeg)

        with zipfile.ZipFile(output / "exam.zip") as archive:
            readme = archive.read("README.TXT").decode("utf-8-sig")
        assert "Exam: CT DICOMDIR forged line\r\n" in readme
        assert "Patient: SampleBarbara\r\n" in readme
        assert "\u202e" not in readme


class TestProgress:
    def test_progress_ends_at_total(self, one_ct, output) -> None:
        calls: list[tuple[int, int]] = []

        build_package(
            one_ct,
            INFO,
            None,
            "zip",
            output / "exam.zip",
            tiny_jpeg,
            lambda done, total: calls.append((done, total)),
        )

        # Two headers, two copies, two frames and the check.
        assert calls[-1] == (7, 7)
        assert [done for done, _ in calls] == sorted(done for done, _ in calls)

    @pytest.mark.parametrize("fmt", ["zip", "iso"])
    def test_progress_is_reported_about_once_per_percent(self, output, fmt) -> None:
        study, series = generate_uid(), generate_uid()
        images = [
            package_image(
                exam_copy(US_120_FRAMES, output.parent, study, series, number),
                1,
                "US",
                frames=120,
            )
            for number in (1, 2, 3)
        ]
        calls: list[tuple[int, int]] = []

        build_package(
            images,
            INFO,
            None,
            fmt,
            output / f"exam.{fmt}",
            tiny_jpeg,
            lambda done, total: calls.append((done, total)),
        )

        assert len(calls) <= 101
        assert calls[-1] == (367, 367)


class TestViewerContents:
    def read(self, archive: Path, name: str) -> str:
        with zipfile.ZipFile(archive) as opened:
            return opened.read(name).decode("utf-8-sig")

    def test_series_without_label_gets_a_numbered_name(self, one_ct, output) -> None:
        unlabelled = [
            PackageImage(image.open_file, image.size, 7, " \n ", 1, 1)
            for image in one_ct
        ]

        build_package(unlabelled, INFO, None, "zip", output / "exam.zip", tiny_jpeg)

        page = self.read(output / "exam.zip", "INDEX.HTM")
        readme = self.read(output / "exam.zip", "README.TXT")
        assert '<h2 id="series-title">Series 1</h2>' in page
        assert "  1. Series 1: 2 DICOM files in DICOM/S0000001" in readme

    def test_exam_without_frames_says_so(self, output, tmp_path) -> None:
        study, series = generate_uid(), generate_uid()
        report = exam_copy(SR, tmp_path, study, series, 1)

        build_package(
            [package_image(report, 1, "SR", frames=0)],
            INFO,
            None,
            "zip",
            output / "exam.zip",
            tiny_jpeg,
        )

        page = self.read(output / "exam.zip", "INDEX.HTM")
        assert "This exam has no images that this page can show." in page
        assert 'id="frame-image"' not in page

    def test_series_without_frames_is_unlisted(self, zip_tree) -> None:
        page = (zip_tree / "INDEX.HTM").read_text()

        folders = re.findall(r'data-folder="VIEWER/(S\d+)"', page)
        assert folders == ["S0000001", "S0000002", "S0000003", "S0000005"]


class TestLargeArchives:
    def test_zip64_records_past_the_limits(self, one_ct, output, monkeypatch) -> None:
        # A real ZIP64 archive needs more than 4 GiB or 65,535 members; lower
        # zipfile's limits instead, so that the same records are written.
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1 << 16)
        monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 4)
        target = output / "exam.zip"

        build_package(one_ct, INFO, None, "zip", target, tiny_jpeg)

        data = target.read_bytes()
        assert b"PK\x06\x06" in data[-200:]  # ZIP64 end of central directory
        if shutil.which("unzip"):
            tested = subprocess.run(["unzip", "-tq", str(target)], capture_output=True)
            assert tested.returncode == 0, tested.stdout


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> list[PackageImage]:
    """A fake patient's exam: three CT slices, a 120-frame US clip, an MR in
    Implicit VR Little Endian, a structured report without pixels and an RLE
    mammogram."""
    folder = tmp_path_factory.mktemp("exam")
    study = generate_uid()
    ct_series, us_series, mr_series, sr_series, mg_series = (
        generate_uid() for _ in range(5)
    )

    ct_label = f"CT · Head axial {SCRIPT}"
    images = [
        package_image(
            exam_copy(CT, folder, study, ct_series, number), 10, ct_label, number=number
        )
        for number in (1, 2, 3)
    ]
    others = [
        (US_120_FRAMES, us_series, 20, "US · Echo", 120),
        (MR_IMPLICIT_VR, mr_series, 30, "MR", 1),
        (SR, sr_series, 40, "SR · Dose", 0),
        (MAMMOGRAM, mg_series, 50, "MG · CC", 1),
    ]
    for source, series, key, label, frames in others:
        copy = exam_copy(source, folder, study, series, 1)
        images.append(package_image(copy, key, label, frames))
    return images


@pytest.fixture(scope="module")
def packages(exam, tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("packages")
    results = {
        fmt: build_package(
            exam, INFO, REPORT, fmt, folder / f"exam.{fmt}", render_small
        )
        for fmt in ("zip", "iso")
    }
    trees = tmp_path_factory.mktemp("trees")
    return {
        **results,
        "zip tree": extract_zip(results["zip"].path, trees / "zip"),
        "folder": folder,
        "trees": trees,
    }


@pytest.fixture(scope="module")
def zip_tree(packages) -> Path:
    return packages["zip tree"]


@pytest.fixture(scope="module")
def iso_tree(packages) -> Path:
    return extract_iso(packages["iso"].path, packages["trees"] / "iso")


class TestPackageLayout:
    def test_result_describes_the_written_file(self, packages) -> None:
        for fmt in ("zip", "iso"):
            result = packages[fmt]
            assert result.format == fmt
            assert result.instance_count == 7
            assert result.size == result.path.stat().st_size

    def test_only_the_packages_are_left_in_the_folder(self, packages) -> None:
        assert folder_entries(packages["folder"]) == ["exam.iso", "exam.zip"]

    def test_top_level_has_patient_media_files(self, zip_tree) -> None:
        assert folder_entries(zip_tree) == [
            "DICOM",
            "DICOMDIR",
            "INDEX.HTM",
            "README.TXT",
            "REPORT.PDF",
            "VIEWER",
        ]

    def test_dicom_files_follow_series_then_position(self, zip_tree) -> None:
        files = sorted(
            p.relative_to(zip_tree).as_posix()
            for p in (zip_tree / "DICOM").rglob("*")
            if p.is_file()
        )

        assert files == [
            "DICOM/S0000001/I0000001",
            "DICOM/S0000001/I0000002",
            "DICOM/S0000001/I0000003",
            "DICOM/S0000002/I0000001",
            "DICOM/S0000003/I0000001",
            "DICOM/S0000004/I0000001",
            "DICOM/S0000005/I0000001",
        ]

    def test_dicom_path_components_are_short_names(self, zip_tree) -> None:
        for path in (zip_tree / "DICOM").rglob("*"):
            for component in path.relative_to(zip_tree).parts:
                assert SHORT_NAME.match(component), component

    def test_dicom_files_are_copied_byte_for_byte(self, exam, zip_tree) -> None:
        paths = [
            "DICOM/S0000001/I0000001",
            "DICOM/S0000001/I0000002",
            "DICOM/S0000001/I0000003",
            "DICOM/S0000002/I0000001",
            "DICOM/S0000003/I0000001",
            "DICOM/S0000004/I0000001",
            "DICOM/S0000005/I0000001",
        ]
        for image, path in zip(exam, paths, strict=True):
            with image.open_file() as source:
                assert (zip_tree / path).read_bytes() == source.read(), path

    def test_viewer_has_one_jpeg_per_frame(self, zip_tree) -> None:
        counts = {
            folder.name: len(list(folder.glob("F*.JPG")))
            for folder in sorted((zip_tree / "VIEWER").glob("S*"))
        }

        assert counts == {"S0000001": 3, "S0000002": 120, "S0000003": 1, "S0000005": 1}
        assert (zip_tree / "VIEWER/S0000002/F0000120.JPG").read_bytes()[
            :2
        ] == b"\xff\xd8"

    def test_report_is_copied(self, zip_tree) -> None:
        assert (zip_tree / "REPORT.PDF").read_bytes() == REPORT

    def test_report_is_left_out_without_bytes(self, one_ct, output) -> None:
        build_package(one_ct, INFO, None, "zip", output / "exam.zip", tiny_jpeg)

        with zipfile.ZipFile(output / "exam.zip") as archive:
            names = archive.namelist()
            page = archive.read("INDEX.HTM").decode()
        assert "REPORT.PDF" not in names
        assert "REPORT.PDF" not in page

    def test_zip_members_are_stored_uncompressed(self, packages) -> None:
        with zipfile.ZipFile(packages["zip"].path) as archive:
            methods = {info.compress_type for info in archive.infolist()}
            assert archive.testzip() is None

        assert methods == {zipfile.ZIP_STORED}

    def test_readme_says_how_to_open_the_package(self, zip_tree) -> None:
        readme = (zip_tree / "README.TXT").read_bytes()

        assert readme.startswith(b"\xef\xbb\xbf")
        text = readme.decode("utf-8-sig")
        assert "\r\n" in text
        assert "extract it first" in text
        assert "Open INDEX.HTM in a web browser" in text
        assert "health information" in text
        assert "  2. US · Echo: 1 DICOM file in DICOM/S0000002" in text


class TestDicomdirKeys:
    def directory_records(self, *headers) -> list[pydicom.Dataset]:
        directory = DicomDirectory()
        for number, header in enumerate(headers, start=1):
            directory.add(("DICOM", f"I{number:07d}"), header)
        data = directory.encode()
        return list(pydicom.dcmread(io.BytesIO(data)).DirectoryRecordSequence)

    def header(self, source: Path) -> pydicom.Dataset:
        with source.open("rb") as file:
            return read_header(file)

    def test_missing_study_keys_fall_back(self) -> None:
        header = self.header(CT)
        header.SeriesDate = "20261130"
        header.SeriesTime = "101500"

        _, study, *_ = self.directory_records(header)

        assert study.StudyDate == "20261130"
        assert study.StudyTime == "101500"
        assert study.StudyID == "1"

    def test_missing_instance_number_takes_the_position(self) -> None:
        first, second = self.header(CT), self.header(MR_IMPLICIT_VR)
        second.SeriesInstanceUID = first.SeriesInstanceUID
        second.StudyInstanceUID = first.StudyInstanceUID
        second.PatientID = first.PatientID
        del first.InstanceNumber
        del second.InstanceNumber

        records = self.directory_records(first, second)

        assert [record.DirectoryRecordType for record in records] == [
            "PATIENT",
            "STUDY",
            "SERIES",
            "IMAGE",
            "IMAGE",
        ]
        assert [records[3].InstanceNumber, records[4].InstanceNumber] == [1, 2]

    def test_infinite_numbers_take_the_position(self, tmp_path) -> None:
        ds = pydicom.dcmread(CT)
        ds.InstanceNumber = "99"
        ds.SeriesNumber = "1234567890"
        path = tmp_path / "ct.dcm"
        ds.save_as(path)
        replace_is_value(path, 0x00200013, "99", "inf")
        replace_is_value(path, 0x00200011, "1234567890", "-Infinity")

        _, _, series, image = self.directory_records(self.header(path))

        assert series.SeriesNumber == 1
        assert image.InstanceNumber == 1

    def test_structured_report_gets_an_sr_document_record(self) -> None:
        *_, leaf = self.directory_records(self.header(SR))

        assert leaf.DirectoryRecordType == "SR DOCUMENT"
        assert leaf.CompletionFlag == "COMPLETE"
        assert leaf.VerificationFlag == "VERIFIED"
        assert leaf.VerificationDateTime
        assert leaf.ConceptNameCodeSequence[0].CodeValue == "1111"

    def test_records_carry_the_character_set(self) -> None:
        records = self.directory_records(self.header(CT))

        assert {record.SpecificCharacterSet for record in records} == {"ISO_IR 100"}

    def test_implicit_vr_transfer_syntax_is_referenced(self) -> None:
        *_, leaf = self.directory_records(self.header(MR_IMPLICIT_VR))

        assert leaf.ReferencedTransferSyntaxUIDInFile == "1.2.840.10008.1.2"
        assert leaf.ReferencedFileID == ["DICOM", "I0000001"]

    def test_same_instances_give_the_same_dicomdir(self) -> None:
        def encode() -> bytes:
            directory = DicomDirectory()
            directory.add(("DICOM", "I0000001"), self.header(CT))
            return directory.encode()

        assert encode() == encode()


@needs_tool["dciodvfy"]
@needs_tool["dcmdump"]
class TestDicomdirWithRealTools:
    def test_dciodvfy_reports_no_errors(self, zip_tree) -> None:
        checked = subprocess.run(
            ["dciodvfy", "DICOMDIR"], cwd=zip_tree, capture_output=True, text=True
        )

        lines = (checked.stdout + checked.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert "BasicDirectory" in lines
        assert errors == [], "\n".join(lines)

    def test_dcmdump_reads_every_dicom_file(self, zip_tree) -> None:
        files = sorted(
            path for path in (zip_tree / "DICOM").rglob("*") if path.is_file()
        )

        for path in [zip_tree / "DICOMDIR", *files]:
            dumped = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True)
            assert dumped.returncode == 0, path

    def test_pydicom_file_set_lists_every_instance(self, exam, zip_tree) -> None:
        file_set = FileSet(zip_tree / "DICOMDIR")

        instances = list(file_set)
        assert len(instances) == len(exam)
        for instance in instances:
            assert Path(instance.path).is_file()
            assert (
                pydicom.dcmread(instance.path).SOPInstanceUID == instance.SOPInstanceUID
            )
        assert file_set.ID == "VIEWBOX"

    def test_dcmdump_finds_a_record_at_every_offset(self, zip_tree) -> None:
        dumped = subprocess.run(
            ["dcmdump", str(zip_tree / "DICOMDIR")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

        # dcmdump prints each record's position as "offset=$N", in decimal.
        records = [int(value) for value in re.findall(r"offset=\$(\d+)", dumped)]
        links = re.findall(r"\(0004,(?:1200|1202|1400|1420)\) up (\d+)", dumped)
        targets = {int(value) for value in links} - {0}
        assert len(records) == 1 + 1 + 5 + 7
        assert targets <= set(records)
        # Every record but the first is reached from another one.
        assert targets | {records[0]} == set(records)


@needs_tool["xorriso"]
@needs_tool["isoinfo"]
class TestIsoImage:
    def test_xorriso_lists_the_zip_tree(self, packages, zip_tree) -> None:
        listed = subprocess.run(
            [
                "xorriso",
                "-indev",
                str(packages["iso"].path),
                "-find",
                "/",
                "-type",
                "f",
            ],
            capture_output=True,
            text=True,
            check=True,
        )

        names = sorted(line.strip("'")[1:] for line in listed.stdout.splitlines())
        assert names == sorted(tree(zip_tree))

    def test_extracted_image_matches_the_zip_tree(self, iso_tree, zip_tree) -> None:
        assert tree(iso_tree) == tree(zip_tree)

    def test_joliet_names_match_the_zip_tree(self, packages, zip_tree) -> None:
        listed = subprocess.run(
            ["isoinfo", "-J", "-f", "-i", str(packages["iso"].path)],
            capture_output=True,
            text=True,
            check=True,
        )

        files = {line[1:] for line in listed.stdout.splitlines()} & set(tree(zip_tree))
        assert files == set(tree(zip_tree))

    def test_iso_9660_names_are_level_1(self, packages) -> None:
        listed = subprocess.run(
            ["isoinfo", "-f", "-i", str(packages["iso"].path)],
            capture_output=True,
            text=True,
            check=True,
        )

        names = listed.stdout.split()
        assert "/DICOMDIR.;1" in names
        assert "/VIEWER/S0000002/F0000120.JPG;1" in names
        for name in names:
            for component in name.strip("/").split("/"):
                stem, _, extension = component.partition(";")[0].partition(".")
                assert SHORT_NAME.match(stem), name
                assert re.match(r"^[A-Z0-9_]{0,3}$", extension), name

    def test_volume_id_is_viewbox(self, packages) -> None:
        described = subprocess.run(
            ["isoinfo", "-d", "-i", str(packages["iso"].path)],
            capture_output=True,
            text=True,
            check=True,
        )

        assert "Volume id: VIEWBOX" in described.stdout
        assert "Joliet with UCS level 3 found" in described.stdout
        assert "Rock Ridge signatures version 1 found" in described.stdout


@dataclass
class OpenedViewer:
    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.mark.browser
@needs_chromium
class TestOfflineViewer:
    @pytest.fixture
    def viewer(self, browser, zip_tree) -> Any:
        context = browser.new_context(viewport={"width": 390, "height": 844})
        viewer = OpenedViewer(context.new_page())

        def only_files(route: Any) -> None:
            viewer.requests.append(route.request.url)
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                route.abort()

        context.route("**/*", only_files)
        viewer.page.on("pageerror", lambda error: viewer.errors.append(str(error)))
        viewer.page.on("dialog", lambda dialog: viewer.errors.append(dialog.message))
        viewer.page.goto((zip_tree / "INDEX.HTM").as_uri())
        yield viewer
        context.close()

    def image_state(self, page: Any) -> dict[str, Any]:
        """Return the frame image's state once it has loaded or failed."""
        image = page.locator("#frame-image")
        for _ in range(50):
            state = image.evaluate(
                "image => ({complete: image.complete, width: image.naturalWidth, "
                "src: image.getAttribute('src'), alt: image.alt})"
            )
            if state["complete"]:
                break
            page.wait_for_timeout(50)
        return state

    def test_first_series_shows_a_loaded_jpeg(self, viewer) -> None:
        state = self.image_state(viewer.page)

        assert state["src"] == "VIEWER/S0000001/F0000001.JPG"
        assert state["width"] == VIEWER_EDGE
        assert state["alt"] == f"CT · Head axial {SCRIPT}, image 1 of 3"

    def test_no_request_leaves_the_folder(self, viewer) -> None:
        self.image_state(viewer.page)

        # The page, its script, its style sheet and at least one frame.
        assert viewer.requests[0] == viewer.page.url
        assert len(viewer.requests) >= 4
        assert [url for url in viewer.requests if not url.startswith("file://")] == []

    def test_keyboard_scrolls_a_multi_frame_series(self, viewer) -> None:
        page = viewer.page
        page.get_by_role("link", name=re.compile("US · Echo")).click()
        first = self.image_state(page)
        page.keyboard.press("ArrowRight")
        second = self.image_state(page)
        page.keyboard.press("End")
        last = self.image_state(page)

        assert first["src"] == "VIEWER/S0000002/F0000001.JPG"
        assert second["src"] == "VIEWER/S0000002/F0000002.JPG"
        assert second["width"] > 0
        assert second["alt"] == "US · Echo, image 2 of 120"
        assert last["src"] == "VIEWER/S0000002/F0000120.JPG"
        assert page.locator("#frame-position").text_content() == "Image 120 of 120"
        assert page.get_by_role("button", name="Next image").is_disabled()

    def test_buttons_slider_and_wheel_move_through_frames(self, viewer) -> None:
        page = viewer.page
        page.get_by_role("link", name=re.compile("US · Echo")).click()

        page.get_by_role("button", name="Next image").click()
        assert self.image_state(page)["src"].endswith("F0000002.JPG")
        page.get_by_role("slider", name="Image").fill("60")
        assert self.image_state(page)["src"].endswith("F0000060.JPG")
        page.locator("#frame-area").hover()
        page.mouse.wheel(0, 300)
        page.wait_for_timeout(200)
        assert self.image_state(page)["src"].endswith("F0000063.JPG")

    def test_report_link_points_at_the_pdf(self, viewer) -> None:
        link = viewer.page.get_by_role("link", name="Open the report (PDF)")

        assert link.get_attribute("href") == "REPORT.PDF"

    def test_script_in_a_label_shows_as_text(self, viewer) -> None:
        heading = viewer.page.get_by_role("heading", name=f"CT · Head axial {SCRIPT}")

        assert heading.is_visible()
        assert viewer.errors == []

    def test_page_fits_a_phone_screen(self, viewer) -> None:
        width = viewer.page.evaluate("document.documentElement.scrollWidth")

        assert width <= 390
        assert viewer.page.get_by_role("button", name="Previous image").is_visible()
