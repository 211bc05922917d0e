"""Benchmark Viewbox's exam packages against zip -0, xorriso, dcmmkdir and
Orthanc's /studies/{id}/media.

The exam is 1,000 CT slices of 512x512 16-bit pixels (about 0.5 GB), made
from pydicom-data's 693_UNCR.dcm with fresh UIDs and increasing positions.
Viewbox builds each package in a child process, which reports its own time
and peak RSS. Run it through bench/run, which provides the private network
namespace that this script checks for before it starts Orthanc. Every file
it writes is under one temporary folder, removed however the run ends.

    bench/run packages
"""

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Final

import pydicom
from pydicom.uid import generate_uid
from render_frames import (  # the sibling benchmark: Orthanc and the namespace
    OrthancClient,
    check_private_network,
    package_directory,
    running_orthanc,
)

REPOSITORY: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

EXAM_SIZE: Final = 1000
DICOMDIR_SIZES: Final = (500, 1000, 2000)
# Each timing is the best of this many runs, all with the files in the
# page cache.
REPEATS: Final = 2
DICOMDIR_REPEATS: Final = 3
REAL_RENDER_EDGE: Final = 512
RSS_GOAL_MIB: Final = 300
SLICE_SPACING_MM: Final = 0.625
MEDIA_CHUNK: Final = 1 << 20
# A per-instance DICOMDIR cost at 2,000 instances within this factor of the
# cost at 500 counts as linear growth.
LINEAR_TOLERANCE: Final = 1.3


@dataclass(frozen=True)
class Build:
    """A child process's figures of one build_package call."""

    seconds: float
    peak_rss_kib: int
    size: int


def write_exam(folder: Path, count: int) -> list[Path]:
    """Write count CT slices of one study and series, named I0000001 on."""
    source = package_directory("data_store") / "data" / "693_UNCR.dcm"
    dataset = pydicom.dcmread(source)
    dataset.PatientName = "BENCHMARK^CT"
    dataset.PatientID = "BENCH-0001"
    dataset.StudyDate, dataset.StudyTime, dataset.StudyID = "20261201", "093000", "1"
    dataset.AccessionNumber = "BENCH0001"
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SeriesNumber = 1
    x, y, z = (float(value) for value in dataset.ImagePositionPatient)
    paths = []
    for number in range(1, count + 1):
        location = z + (number - 1) * SLICE_SPACING_MM
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = number
        dataset.ImagePositionPatient = [x, y, location]
        dataset.SliceLocation = location
        path = folder / f"I{number:07d}"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def linked_tree(root: Path, files: list[Path]) -> Path:
    """Make root/DICOM/ with hard links to files, as dcmmkdir and zip read them."""
    dicom = root / "DICOM"
    dicom.mkdir(parents=True)
    for path in files:
        os.link(path, dicom / path.name)
    return root


def read_all(paths: list[Path]) -> None:
    """Read every file once, so every run starts with them in the page cache."""
    for path in paths:
        with path.open("rb") as file:
            while file.read(MEDIA_CHUNK):
                pass


def best_of(repeats: int, run: Callable[..., float], *arguments: object) -> float:
    return min(run(*arguments) for _ in range(repeats))


def time_command(command: list[str], cwd: Path, output: Path | None) -> float:
    """Time a command and, when it writes output, an fsync of it."""
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    if output is not None:
        with output.open("rb") as file:
            os.fsync(file.fileno())
    seconds = time.perf_counter() - start
    if output is not None:
        output.unlink()
    return seconds


def time_child_build(fmt: str, render: str, dicom: Path, output: Path) -> Build:
    """Run build_package in a child process and return what it reports."""
    command = [
        sys.executable,
        __file__,
        "--child",
        fmt,
        render,
        str(dicom),
        str(output),
    ]
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    output.unlink()
    return Build(report["seconds"], report["peak_rss_kib"], report["size"])


def best_child_build(fmt: str, render: str, dicom: Path, output: Path) -> Build:
    builds = [time_child_build(fmt, render, dicom, output) for _ in range(REPEATS)]
    fastest = min(builds, key=lambda build: build.seconds)
    peak = max(build.peak_rss_kib for build in builds)
    return Build(fastest.seconds, peak, fastest.size)


def run_child(fmt: str, render: str, dicom: Path, output: Path) -> None:
    """Build one package in this process and print its figures as JSON."""
    from django.conf import settings

    settings.configure(USE_I18N=False)
    from viewbox.downloads.packaging import PackageImage, PackageInfo, build_package
    from viewbox.viewer.rendering import render_jpeg

    paths = sorted(dicom.iterdir())
    images = [
        PackageImage(
            open_file=lambda path=path: path.open("rb"),
            size=path.stat().st_size,
            series_key=1,
            series_label="CT · Benchmark axial",
            instance_number=number,
            number_of_frames=1,
        )
        for number, path in enumerate(paths, start=1)
    ]
    tiny = render_jpeg(paths[0], 0, max_edge=16)

    def render_tiny(image: PackageImage, frame: int) -> bytes:
        return tiny

    def render_real(image: PackageImage, frame: int) -> bytes:
        with image.open_file() as file:
            return render_jpeg(file, frame, max_edge=REAL_RENDER_EDGE)

    info = PackageInfo("CT CHEST", "December 1, 2026 · Benchmark", "BENCHMARK^CT")
    renderer = render_real if render == "real" else render_tiny
    start = time.perf_counter()
    result = build_package(images, info, None, fmt, output, renderer)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_kib": peak, "size": result.size}))


def time_viewbox_dicomdir(root: Path) -> float:
    """Time reading every header under root/DICOM and writing a DICOMDIR."""
    from viewbox.downloads.dicomdir import DicomDirectory, read_header

    start = time.perf_counter()
    directory = DicomDirectory()
    for path in sorted((root / "DICOM").iterdir()):
        with path.open("rb") as file:
            directory.add(("DICOM", path.name), read_header(file))
    (root / "VIEWBOX.DIR").write_bytes(directory.encode())
    return time.perf_counter() - start


def count_records(path: Path) -> int:
    return sum(
        1
        for record in pydicom.dcmread(path).DirectoryRecordSequence
        if record.DirectoryRecordType == "IMAGE"
    )


@contextmanager
def work_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="viewbox-bench-packages-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def time_orthanc_media(paths: list[Path]) -> tuple[float, int]:
    """Upload the exam to Orthanc and time GET /studies/{id}/media.

    Returns the best time and the size of the ZIP file Orthanc sent.
    """
    with running_orthanc() as port:
        client = OrthancClient(port)
        for path in paths:
            client.upload(path)
        status, _, body = client.request("GET", "/studies")
        studies = json.loads(body)
        if status != 200 or len(studies) != 1:
            raise SystemExit(f"Orthanc lists the studies {studies!r} after the upload")
        timings = [media_download(port, studies[0]) for _ in range(REPEATS)]
    return min(seconds for seconds, _ in timings), timings[0][1]


def media_download(port: int, study: str) -> tuple[float, int]:
    """Download the study's media ZIP, discarding it as it arrives."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    connection.request("GET", f"/studies/{study}/media")
    response = connection.getresponse()
    size = 0
    while chunk := response.read(MEDIA_CHUNK):
        size += len(chunk)
    seconds = time.perf_counter() - start
    connection.close()
    if response.status != 200:
        raise SystemExit(f"GET /studies/{study}/media returned HTTP {response.status}")
    return seconds, size


def tool_version(command: list[str], word: str) -> str:
    """Return the first line of a tool's version output that has word in it."""
    finished = subprocess.run(command, capture_output=True, text=True)
    lines = (finished.stdout + finished.stderr).splitlines()
    return next((line.strip() for line in lines if word in line), "unknown")


def print_machine() -> None:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    print(
        f"{os.cpu_count()} cores ({model}), {memory_kib / 2**20:.0f} GiB, "
        f"Python {platform.python_version()}, pydicom {version('pydicom')}, "
        f"pycdlib {version('pycdlib')}"
    )
    tools = [
        (["zip", "-v"], "This is Zip"),
        (["xorriso", "-version"], "xorriso 1"),
        (["dcmmkdir", "--version"], "dcmmkdir"),
        (["Orthanc", "--version"], "Orthanc"),
    ]
    print("; ".join(tool_version(command, word) for command, word in tools))


def print_row(
    name: str, seconds: float, reference: float | None, note: str = ""
) -> None:
    ratio = f"{seconds / reference:6.2f}" if reference else "      "
    print(f"{name:44} {seconds:8.2f} {ratio}  {note}")


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(f"Stopped by signal {signum}")


def package_tree(work: Path, exam: Path) -> Path:
    """Extract a Viewbox ZIP (tiny frames): the tree that its ISO contains."""
    archive = work / "tree.zip"
    command = [sys.executable, __file__, "--child", "zip", "tiny"]
    subprocess.run(
        [*command, str(exam / "DICOM"), str(archive)], check=True, capture_output=True
    )
    tree = work / "tree"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tree)
    archive.unlink()
    return tree


@dataclass
class Results:
    zip_synced: float = 0.0
    zip_tiny: Build | None = None
    zip_real: Build | None = None
    iso_synced: float = 0.0
    iso_tiny: Build | None = None
    orthanc: float = 0.0
    dicomdir_per_instance: dict[int, float] = field(default_factory=dict)


def compare_zip(work: Path, exam: Path, results: Results) -> None:
    command = ["zip", "-0", "-r", "-q", str(work / "zip0.zip"), "DICOM"]
    plain = best_of(REPEATS, time_command, command, exam, None)
    (work / "zip0.zip").unlink()
    results.zip_synced = best_of(
        REPEATS, time_command, command, exam, work / "zip0.zip"
    )
    print_row("zip -0 -r DICOM", plain, None, "no fsync")
    print_row("zip -0 -r DICOM, then fsync", results.zip_synced, None, "ZIP reference")

    results.zip_tiny = best_child_build("zip", "tiny", exam / "DICOM", work / "vb.zip")
    print_build(
        "Viewbox ZIP, DICOM part (fixed tiny JPEG)",
        results.zip_tiny,
        results.zip_synced,
    )
    results.zip_real = best_child_build("zip", "real", exam / "DICOM", work / "vb.zip")
    name = f"Viewbox ZIP, render_jpeg max_edge {REAL_RENDER_EDGE}"
    print_build(name, results.zip_real, results.zip_synced)


def compare_iso(work: Path, exam: Path, results: Results) -> None:
    tree = package_tree(work, exam)
    output = work / "x.iso"
    command = [
        "xorriso",
        "-as",
        "mkisofs",
        "-quiet",
        "-J",
        "-R",
        "-o",
        str(output),
        str(tree),
    ]
    plain = best_of(REPEATS, time_command, command, work, None)
    output.unlink()
    results.iso_synced = best_of(REPEATS, time_command, command, work, output)
    shutil.rmtree(tree)
    print_row("xorriso -as mkisofs -J -R", plain, None, "no fsync")
    print_row(
        "xorriso -as mkisofs -J -R, then fsync",
        results.iso_synced,
        None,
        "ISO reference",
    )

    results.iso_tiny = best_child_build("iso", "tiny", exam / "DICOM", work / "vb.iso")
    print_build(
        "Viewbox ISO, DICOM part (fixed tiny JPEG)",
        results.iso_tiny,
        results.iso_synced,
    )


def compare_orthanc(paths: list[Path], results: Results) -> None:
    results.orthanc, size = time_orthanc_media(paths)
    note = f"{size / 1e9:.2f} GB over loopback HTTP, discarded, no fsync"
    print_row("Orthanc GET /studies/{id}/media", results.orthanc, None, note)


def compare_dicomdir(work: Path, paths: list[Path], results: Results) -> None:
    print(f"\nDICOMDIR alone, best of {DICOMDIR_REPEATS}: read headers, write file")
    titles = ("Viewbox s", "us each", "dcmmkdir s", "us each")
    print(f"{'instances':>9} " + " ".join(f"{title:>10}" for title in titles))
    command = ["dcmmkdir", "-q", "+r", "+D", "DCMTK.DIR", "DICOM"]
    for count in DICOMDIR_SIZES:
        root = linked_tree(work / f"dicomdir-{count}", paths[:count])
        viewbox = best_of(DICOMDIR_REPEATS, time_viewbox_dicomdir, root)
        dcmtk = best_of(DICOMDIR_REPEATS, time_command, command, root, None)
        for name in ("VIEWBOX.DIR", "DCMTK.DIR"):
            if count_records(root / name) != count:
                raise SystemExit(f"{name} does not list {count} instances")
        results.dicomdir_per_instance[count] = viewbox / count
        print(
            f"{count:9d} {viewbox:10.3f} {1e6 * viewbox / count:10.0f} "
            f"{dcmtk:10.3f} {1e6 * dcmtk / count:10.0f}"
        )


def print_build(name: str, build: Build, reference: float) -> None:
    note = f"{build.size / 1e9:.2f} GB, peak RSS {build.peak_rss_kib >> 10} MiB"
    print_row(name, build.seconds, reference, note)


def print_goals(results: Results) -> None:
    assert results.zip_tiny is not None
    assert results.zip_real is not None
    assert results.iso_tiny is not None
    zip_seconds, iso_seconds = results.zip_tiny.seconds, results.iso_tiny.seconds
    smallest, largest = min(DICOMDIR_SIZES), max(DICOMDIR_SIZES)
    per_instance = results.dicomdir_per_instance
    growth = per_instance[largest] / per_instance[smallest]
    builds = (results.zip_tiny, results.zip_real, results.iso_tiny)
    peak_mib = max(build.peak_rss_kib for build in builds) >> 10
    rows = [
        ("Viewbox ZIP / (zip -0 + fsync)", zip_seconds / results.zip_synced,
         "at most 1.5", zip_seconds <= 1.5 * results.zip_synced),
        ("Viewbox ZIP / Orthanc media", zip_seconds / results.orthanc,
         "below 1", zip_seconds < results.orthanc),
        ("Viewbox ISO / (xorriso + fsync)", iso_seconds / results.iso_synced,
         "at most 1.5", iso_seconds <= 1.5 * results.iso_synced),
        (f"DICOMDIR cost per instance, {largest} / {smallest}", growth,
         "about 1 (linear)", growth < LINEAR_TOLERANCE),
        ("Peak RSS of a build, MiB", peak_mib,
         f"below {RSS_GOAL_MIB}", peak_mib < RSS_GOAL_MIB),
    ]  # fmt: skip
    print("\nGoals")
    for name, value, target, met in rows:
        print(f"  {name:44} {value:7.2f}  {target}: {'met' if met else 'MISSED'}")


def main() -> None:
    # SIGTERM would otherwise end Python without the finally blocks that
    # stop Orthanc and remove the temporary files.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    check_private_network()
    print_machine()

    results = Results()
    with work_folder() as work:
        sources = work / "sources"
        sources.mkdir()
        paths = write_exam(sources, max(DICOMDIR_SIZES))
        exam = linked_tree(work / "exam", paths[:EXAM_SIZE])
        exam_bytes = sum(path.stat().st_size for path in paths[:EXAM_SIZE])
        read_all(paths)
        print(
            f"\nExam: {EXAM_SIZE} CT instances, {exam_bytes / 1e9:.2f} GB. Best of "
            f"{REPEATS} runs with the files in the page cache. Viewbox builds in a "
            "child process and fsyncs its output; ratios are to the reference above."
        )
        print(f"{'':44} {'seconds':>8} {'ratio':>6}  note")
        compare_zip(work, exam, results)
        compare_iso(work, exam, results)
        compare_orthanc(paths[:EXAM_SIZE], results)
        compare_dicomdir(work, paths, results)
    print_goals(results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("FMT", "RENDER", "DICOM", "OUT"))
    arguments = parser.parse_args()
    if arguments.child:
        fmt, render, dicom, output = arguments.child
        run_child(fmt, render, Path(dicom), Path(output))
    else:
        main()
