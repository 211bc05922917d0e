"""Benchmark Viewbox's render_jpeg against Orthanc's frame preview.

Both render the same 200 frames of mixed modalities and transfer syntaxes to
JPEG. Viewbox also renders the portal's tile, and the three sizes of a first
view, once per size and in one render_jpegs call. Run it through bench/run,
which provides the private network namespace that this script checks for
before it starts Orthanc.
"""

import ctypes
import http.client
import importlib.util
import io
import json
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

from PIL import Image

REPOSITORY: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from viewbox.viewer.rendering import (  # noqa: E402
    RenderError,
    render_jpeg,
    render_jpegs,
)

FRAME_COUNT: Final = 200
PORTAL_MAX_EDGE: Final = 1024
# The tile of the portal's image list, and the sizes that the render_previews
# task makes from one decode after an import.
TILE_EDGE: Final = 256
FIRST_VIEW_EDGES: Final = (TILE_EDGE, 512, 1024)
FIRST_VIEW: Final = "Viewbox first view"
EACH_FIRST_VIEW_EDGE: Final = "Viewbox 256+512+1024 apart"
# Columns of the per-source table: (title, name of the Viewbox run).
PER_SOURCE_COLUMNS: Final = (
    ("full", "Viewbox full size"),
    ("tile", f"Viewbox tile {TILE_EDGE}"),
    ("apart", EACH_FIRST_VIEW_EDGE),
    ("first", FIRST_VIEW),
)
# Orthanc 1.10 encodes previews at JPEG quality 90 (the quantization tables
# of its previews match libjpeg's at 90), so Viewbox uses 90 here too.
ORTHANC_PREVIEW_QUALITY: Final = 90

ORTHANC_START_TIMEOUT: Final = 30.0
ORTHANC_STOP_TIMEOUT: Final = 20.0
HTTP_TIMEOUT: Final = 60.0
ROUND_TRIP_SAMPLES: Final = 50


@dataclass(frozen=True)
class Source:
    """One file of the benchmark and how many of the 200 frames it supplies."""

    label: str
    path: Path
    frames: tuple[int, ...]
    count: int


@dataclass
class Timings:
    """Seconds per rendered frame, and the frames that failed, per source."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def add(self, source: Source, seconds: float, failure: str | None) -> None:
        if failure is None:
            self.seconds.setdefault(source.label, []).append(seconds)
        else:
            self.failures.setdefault(source.label, []).append(failure)

    def rendered(self) -> int:
        return sum(len(values) for values in self.seconds.values())

    def failed(self) -> int:
        return sum(len(values) for values in self.failures.values())

    def total(self, labels: set[str] | None = None) -> float:
        return sum(
            sum(values)
            for label, values in self.seconds.items()
            if labels is None or label in labels
        )


def package_directory(name: str) -> Path:
    """Find an installed package without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"Package {name!r} is not installed in {sys.executable}")
    return Path(next(iter(spec.submodule_search_locations)))


def benchmark_sources() -> list[Source]:
    pydicom_data = package_directory("data_store") / "data"
    mammograms = sorted((package_directory("mammograms") / "cases").glob("*/*.dcm"))
    sources = [
        Source("CT, uncompressed", pydicom_data / "693_UNCI.dcm", (0,), 16),
        Source("CT, JPEG 2000 lossless", pydicom_data / "693_J2KR.dcm", (0,), 16),
        Source("MR, JPEG 2000 lossless", pydicom_data / "MR2_J2KR.dcm", (0,), 12),
        Source("MR, uncompressed", pydicom_data / "MR2_UNCI.dcm", (0,), 8),
        Source("CR MONOCHROME1, JPEG 2000", pydicom_data / "RG1_J2KR.dcm", (0,), 4),
        Source("CR MONOCHROME1, uncompressed", pydicom_data / "RG1_UNCI.dcm", (0,), 6),
        Source(
            "US 120 frames, JPEG baseline",
            pydicom_data / "color3d_jpeg_baseline.dcm",
            tuple(range(0, 120, 3)),
            50,
        ),
        Source("US palette, RLE", pydicom_data / "OBXXXX1A_rle.dcm", (0,), 16),
        Source("US YBR_RCT, JPEG 2000", pydicom_data / "US1_J2KR.dcm", (0,), 10),
        Source(
            "Enhanced MR, JPEG-LS",
            pydicom_data / "emri_small_jpeg_ls_lossless.dcm",
            tuple(range(10)),
            20,
        ),
        Source(
            "Enhanced MR, big endian",
            pydicom_data / "emri_small_big_endian.dcm",
            tuple(range(10)),
            10,
        ),
        Source(
            "Enhanced CT, functional groups",
            pydicom_data / "eCT_Supplemental.dcm",
            (0, 1),
            6,
        ),
        Source(
            "US, JPEG lossless",
            pydicom_data / "JPGLosslessP14SV1_1s_1f_8b.dcm",
            (0,),
            10,
        ),
    ]
    sources += [Source(f"MG {path.stem}, RLE", path, (0,), 2) for path in mammograms]
    return sources


def interleave(sources: list[Source]) -> list[tuple[Source, int]]:
    """Spread each source's frames evenly over the run, so no file stays hot."""
    keyed = []
    for source in sources:
        for k in range(source.count):
            frame = source.frames[k % len(source.frames)]
            keyed.append(((k + 0.5) / source.count, source, frame))
    keyed.sort(key=lambda item: item[0])
    return [(source, frame) for _, source, frame in keyed]


# A function that renders one frame of a file, the unit that the benchmark times.
Renderer = Callable[[Path, int], object]


def render_at(max_edge: int | None) -> Renderer:
    def render(path: Path, frame: int) -> bytes:
        return render_jpeg(
            path, frame, max_edge=max_edge, quality=ORTHANC_PREVIEW_QUALITY
        )

    return render


def render_each_first_view_edge(path: Path, frame: int) -> list[bytes]:
    """Render the first view's sizes with one render_jpeg call each."""
    return [
        render_jpeg(path, frame, max_edge=edge, quality=ORTHANC_PREVIEW_QUALITY)
        for edge in FIRST_VIEW_EDGES
    ]


def render_first_view(path: Path, frame: int) -> dict[int | None, bytes]:
    """Render the first view's sizes from one decode."""
    return render_jpegs(path, frame, FIRST_VIEW_EDGES, quality=ORTHANC_PREVIEW_QUALITY)


def time_viewbox(plan: list[tuple[Source, int]], render: Renderer) -> Timings:
    timings = Timings()
    for source, frame in plan:
        start = time.perf_counter()
        try:
            render(source.path, frame)
        except RenderError as error:
            timings.add(source, 0.0, str(error))
            continue
        timings.add(source, time.perf_counter() - start, None)
    return timings


def check_private_network() -> None:
    """Raise SystemExit unless the network namespace has only loopback."""
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        raise SystemExit(
            f"Orthanc not started: network interfaces {names} are present, "
            "expected only lo. Run this benchmark through bench/run."
        )


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def orthanc_configuration(directory: Path, port: int) -> dict[str, object]:
    return {
        "Name": "ViewboxBenchmark",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "index"),
        "HttpServerEnabled": True,
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [],
        "LuaScripts": [],
        "DicomModalities": {},
        "OrthancPeers": {},
        "WebDavEnabled": False,
        "OrthancExplorerEnabled": False,
        "SaveJobs": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
    }


def _end_with_parent() -> None:
    # Linux prctl(PR_SET_PDEATHSIG, SIGTERM): Orthanc is stopped even if this
    # script is killed before its finally block runs.
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextmanager
def running_orthanc() -> Iterator[int]:
    """Start Orthanc on a free loopback port and stop it and its files on exit."""
    check_private_network()
    executable = shutil.which("Orthanc")
    if executable is None:
        raise SystemExit("Orthanc is not installed: apt-get install -y orthanc")

    directory = Path(tempfile.mkdtemp(prefix="viewbox-bench-orthanc-"))
    process = None
    try:
        port = free_loopback_port()
        config_path = directory / "orthanc.json"
        config_path.write_text(json.dumps(orthanc_configuration(directory, port)))
        log_path = directory / "orthanc.log"
        process = subprocess.Popen(
            [executable, "--no-jobs", f"--logfile={log_path}", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_end_with_parent,
        )
        wait_until_ready(process, port, log_path)
        yield port
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(directory, ignore_errors=True)


def wait_until_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + ORTHANC_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"Orthanc exited with status {process.returncode} at start:\n"
                f"{log.read_text(errors='replace')[-2000:]}"
            )
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/system")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(
        f"Orthanc did not respond to GET /system within {ORTHANC_START_TIMEOUT} s:\n"
        f"{log.read_text(errors='replace')[-2000:]}"
    )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=ORTHANC_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print("Orthanc did not stop after SIGTERM; sending SIGKILL", file=sys.stderr)
        process.kill()
        process.wait(timeout=5)


class OrthancClient:
    """A keep-alive HTTP connection to the Orthanc REST API on loopback."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=HTTP_TIMEOUT
        )

    def request(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, str, bytes]:
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        content = response.read()
        return response.status, response.getheader("Content-Type", ""), content

    def upload(self, path: Path) -> str:
        status, _, content = self.request(
            "POST",
            "/instances",
            path.read_bytes(),
            **{"Content-Type": "application/dicom"},
        )
        if status != 200:
            raise SystemExit(f"Upload of {path.name} to Orthanc failed: HTTP {status}")
        instance_id: str = json.loads(content)["ID"]
        return instance_id

    def preview(self, instance_id: str, frame: int) -> tuple[int, str, bytes]:
        return self.request(
            "GET",
            f"/instances/{instance_id}/frames/{frame}/preview",
            Accept="image/jpeg",
        )


def time_orthanc(
    client: OrthancClient, ids: dict[Path, str], plan: list[tuple[Source, int]]
) -> Timings:
    timings = Timings()
    for source, frame in plan:
        start = time.perf_counter()
        status, content_type, _ = client.preview(ids[source.path], frame)
        elapsed = time.perf_counter() - start
        if status == 200 and content_type == "image/jpeg":
            timings.add(source, elapsed, None)
        else:
            timings.add(source, 0.0, f"HTTP {status}")
    return timings


def median_round_trip(client: OrthancClient) -> float:
    """Median seconds of a GET /system, the HTTP cost inside each Orthanc time."""
    samples = []
    for _ in range(ROUND_TRIP_SAMPLES):
        start = time.perf_counter()
        client.request("GET", "/system")
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]


def compare_sizes(
    client: OrthancClient, ids: dict[Path, str], sources: list[Source]
) -> list[str]:
    """Return one line per source whose two full-size outputs differ in size."""
    mismatches = []
    for source in sources:
        frame = source.frames[0]
        status, _, content = client.preview(ids[source.path], frame)
        if status != 200:
            continue
        orthanc_size = Image.open(io.BytesIO(content)).size
        viewbox_jpeg = render_jpeg(source.path, frame)
        viewbox_size = Image.open(io.BytesIO(viewbox_jpeg)).size
        if orthanc_size != viewbox_size:
            mismatches.append(
                f"{source.label}: Viewbox {viewbox_size}, Orthanc {orthanc_size}"
            )
    return mismatches


def warm_up_viewbox(sources: list[Source], render: Renderer) -> None:
    """Load the decoders and fill the page cache before timing."""
    for source in sources:
        try:
            render(source.path, source.frames[0])
        except RenderError:
            pass


def print_summary(
    results: dict[str, Timings], orthanc: Timings, peak_rss_kib: int, round_trip: float
) -> None:
    print(
        f"{'':30} {'frames':>6} {'failed':>6} {'total s':>8} "
        f"{'frames/s':>9} {'ms/frame':>9}"
    )
    for name, timings in results.items():
        rendered = timings.rendered()
        total = timings.total()
        rate = rendered / total if total else 0.0
        per_frame = 1000 * total / rendered if rendered else 0.0
        print(
            f"{name:30} {rendered + timings.failed():6d} {timings.failed():6d} "
            f"{total:8.3f} {rate:9.1f} {per_frame:9.2f}"
        )

    full_size = results["Viewbox full size"]
    common = set(full_size.seconds) & set(orthanc.seconds)
    frames = sum(len(orthanc.seconds[label]) for label in common)
    viewbox_ms = 1000 * full_size.total(common) / frames
    orthanc_ms = 1000 * orthanc.total(common) / frames
    print(
        f"\nOn the {frames} frames that both rendered: Viewbox full size "
        f"{viewbox_ms:.2f} ms/frame, Orthanc preview {orthanc_ms:.2f} ms/frame, "
        f"time ratio Viewbox/Orthanc {viewbox_ms / orthanc_ms:.2f} "
        "(below 1 means Viewbox is faster)"
    )
    print(
        f"Orthanc times include an HTTP round trip on loopback "
        f"(median GET /system {1000 * round_trip:.2f} ms)"
    )
    print(f"Peak RSS of the Viewbox side: {peak_rss_kib / 1024:.0f} MiB")


def print_per_source(
    results: dict[str, Timings], orthanc: Timings, sources: list[Source]
) -> None:
    titles = " ".join(f"{title:>8}" for title, _ in PER_SOURCE_COLUMNS)
    print(f"\n{'source (ms per frame)':36} {'frames':>6} {titles} {'Orthanc':>8}")
    for source in sources:
        cells = []
        for _, name in PER_SOURCE_COLUMNS:
            viewbox = results[name].seconds.get(source.label, [])
            cells.append(
                f"{1000 * sum(viewbox) / len(viewbox):8.2f}" if viewbox else "  failed"
            )
        reference = orthanc.seconds.get(source.label, [])
        if reference:
            orthanc_text = f"{1000 * sum(reference) / len(reference):8.2f}"
        else:
            reasons = sorted(set(orthanc.failures.get(source.label, [])))
            orthanc_text = f"  failed ({', '.join(reasons)})"
        print(f"{source.label:36} {source.count:6d} {' '.join(cells)} {orthanc_text}")
    legend = ", ".join(f"{title} = {name}" for title, name in PER_SOURCE_COLUMNS)
    print(f"Viewbox columns: {legend}")


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"Stopped by signal {signum}")


def main() -> None:
    # SIGTERM would otherwise end Python without running the finally blocks
    # that stop Orthanc and remove its files.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    # Fail before the Viewbox timings rather than after them.
    check_private_network()

    sources = benchmark_sources()
    plan = interleave(sources)
    assert len(plan) == FRAME_COUNT, f"the plan has {len(plan)} frames"
    print(
        f"{len(plan)} frames from {len(sources)} files, JPEG quality "
        f"{ORTHANC_PREVIEW_QUALITY}, Python {sys.version.split()[0]}"
    )

    runs: list[tuple[str, Renderer]] = [
        ("Viewbox full size", render_at(None)),
        (f"Viewbox max_edge {PORTAL_MAX_EDGE}", render_at(PORTAL_MAX_EDGE)),
        (f"Viewbox tile {TILE_EDGE}", render_at(TILE_EDGE)),
        (EACH_FIRST_VIEW_EDGE, render_each_first_view_edge),
        (FIRST_VIEW, render_first_view),
    ]
    results = {}
    for name, render in runs:
        warm_up_viewbox(sources, render)
        results[name] = time_viewbox(plan, render)
    # ru_maxrss is in KiB on Linux. Orthanc runs in another process, and the
    # upload below has not yet read any file into this one.
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with running_orthanc() as port:
        client = OrthancClient(port)
        ids = {source.path: client.upload(source.path) for source in sources}
        for source in sources:
            client.preview(ids[source.path], source.frames[0])
        orthanc = time_orthanc(client, ids, plan)
        round_trip = median_round_trip(client)
        mismatches = compare_sizes(client, ids, sources)

    results["Orthanc preview"] = orthanc
    print_summary(results, orthanc, peak_rss_kib, round_trip)
    print_per_source(results, orthanc, sources)
    for line in mismatches:
        print(f"Output sizes differ: {line}")
    for name, _ in runs:
        if results[name].failed():
            raise SystemExit(f"{name} failed: {results[name].failures}")


if __name__ == "__main__":
    main()
