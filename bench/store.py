"""Benchmark Viewbox's DICOM receiver against dcmtk's storescp and Orthanc 1.10.

dcmtk's storescu sends the same 1,000 CT instances (512x512, 16-bit, made
from pydicom-data's 693_UNCR.dcm with fresh UIDs and positions) to each
receiver, first over one association, then over four associations at once,
each carrying a quarter. Every receiver starts empty for each run. The script
prints instances per second, the ratios, and the receiver's resident memory
at the start, middle and end of each run. Run it through bench/run, which
provides the private network namespace that Orthanc needs.

    bench/run store
"""

import http.client
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Final

from packages import read_all, write_exam
from render_frames import (  # the sibling benchmark: Orthanc and the namespace
    _end_with_parent,
    check_private_network,
    free_loopback_port,
    stop_process,
    wait_until_ready,
)

REPOSITORY: Final = Path(__file__).resolve().parent.parent
PYTHON: Final = REPOSITORY / ".venv" / "bin" / "python"

INSTANCES: Final = 1000
PARALLEL_ASSOCIATIONS: Final = 4
SENDER_AE_TITLE: Final = "STORESCU"
START_TIMEOUT_SECONDS: Final = 60
SEND_TIMEOUT_SECONDS: Final = 1800
RSS_SAMPLE_SECONDS: Final = 0.05
# Goals: Viewbox's instances per second against each reference.
GOAL_FRACTION_OF_STORESCP: Final = 0.5
GOAL_FRACTION_OF_ORTHANC: Final = 1.0


@dataclass(frozen=True)
class Run:
    receiver: str
    associations: int
    seconds: float
    stored: int
    # Resident set of the receiver in KiB: the largest sample of the first,
    # middle and last tenth of the run, and the peak (VmHWM) at its end.
    rss_kib: tuple[int, int, int, int] | None = None

    @property
    def rate(self) -> float:
        return self.stored / self.seconds


def environment() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with status {process.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name} did not listen on port {port} in time")


def send(port: int, called_ae_title: str, folders: list[Path]) -> float:
    """Run one storescu per folder at once; return the wall-clock seconds."""
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [
                "storescu",
                *("-aet", SENDER_AE_TITLE, "-aec", called_ae_title, "+sd"),
                *("127.0.0.1", str(port), str(folder)),
            ],
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for folder in folders
    ]
    for sender in senders:
        _, errors = sender.communicate(timeout=SEND_TIMEOUT_SECONDS)
        if sender.returncode != 0:
            raise SystemExit(f"storescu failed:\n{errors.decode()[-2000:]}")
    return time.perf_counter() - started


class RssSampler:
    """Sample a process's VmRSS from /proc in a thread while a run lasts."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise SystemExit(f"/proc/{self.pid}/status has no {field}")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._status_kib("VmRSS")))
            time.sleep(RSS_SAMPLE_SECONDS)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> tuple[int, int, int, int]:
        first, last = self.samples[0][0], self.samples[-1][0]
        span = last - first

        def largest(start: float, end: float) -> int:
            return max(
                rss
                for at, rss in self.samples
                if first + start * span <= at <= first + end * span
            )

        return (
            largest(0.0, 0.1),
            largest(0.45, 0.55),
            largest(0.9, 1.0),
            self._status_kib("VmHWM"),
        )


@contextmanager
def viewbox_receiver(folder: Path) -> Iterator[tuple[int, Callable[[], int], int]]:
    """Start manage.py run_dicom_receiver on a new SQLite database."""
    data = folder / "data"
    data.mkdir()
    env = {
        **environment(),
        "VIEWBOX_DATA_DIR": str(data),
        "VIEWBOX_DATABASE_URL": f"sqlite:///{data / 'db.sqlite3'}",
        "VIEWBOX_DICOM_CALLING_AE_TITLES": SENDER_AE_TITLE,
    }
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "-v0"], cwd=REPOSITORY, env=env, check=True
    )
    port = free_loopback_port()
    log = (folder / "receiver.log").open("wb")
    process = subprocess.Popen(
        [PYTHON, "manage.py", "run_dicom_receiver", "--port", str(port)],
        cwd=REPOSITORY,
        env=env,
        stdout=log,
        stderr=log,
        preexec_fn=_end_with_parent,
    )

    def count() -> int:
        with sqlite3.connect(data / "db.sqlite3") as database:
            return database.execute("SELECT COUNT(*) FROM records_instance").fetchone()[
                0
            ]

    try:
        wait_for_port(port, process, "run_dicom_receiver")
        yield port, count, process.pid
    finally:
        stop_process(process)
        log.close()


@contextmanager
def storescp_receiver(
    folder: Path, fsync_each_file: bool = False
) -> Iterator[tuple[int, Callable[[], int], int]]:
    """Start storescp writing each instance as received (+B) to a folder.

    --fork gives each association its own process, so that four associations
    are served at once, as the other two receivers do. storescp 3.6.7 has no
    fsync option. With fsync_each_file, it runs coreutils' "sync FILE" (an
    fsync of that file, not of its folder) after each file and waits for it
    (-xcr with -xs) before it takes the next request. That adds a shell and
    a process start to each instance, so it is an upper bound of storescp's
    cost with an fsync.
    """
    output = folder / "storescp"
    output.mkdir()
    port = free_loopback_port()
    options = ["-xcr", "sync #p/#f", "-xs"] if fsync_each_file else []
    process = subprocess.Popen(
        [
            *("storescp", "--fork", "+B", "-od", str(output), "-aet", "STORESCP"),
            *options,
            str(port),
        ],
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_end_with_parent,
    )
    try:
        wait_for_port(port, process, "storescp")
        yield port, lambda: sum(1 for _ in output.iterdir()), process.pid
    finally:
        stop_process(process)


def storescp_sync_receiver(
    folder: Path,
) -> AbstractContextManager[tuple[int, Callable[[], int], int]]:
    return storescp_receiver(folder, fsync_each_file=True)


@contextmanager
def orthanc_receiver(folder: Path) -> Iterator[tuple[int, Callable[[], int], int]]:
    """Start Orthanc with its default storage and a DICOM server."""
    check_private_network()
    http_port, dicom_port = free_loopback_port(), free_loopback_port()
    configuration = {
        "Name": "ViewboxBenchmark",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "Plugins": [],
        "LuaScripts": [],
        "OrthancExplorerEnabled": False,
        "SaveJobs": False,
        "TcpNoDelay": True,
    }
    (folder / "orthanc.json").write_text(json.dumps(configuration))
    process = subprocess.Popen(
        [
            "Orthanc",
            "--no-jobs",
            f"--logfile={folder / 'orthanc.log'}",
            str(folder / "orthanc.json"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_end_with_parent,
    )

    def count() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        connection.request("GET", "/statistics")
        statistics = json.loads(connection.getresponse().read())
        connection.close()
        return int(statistics["CountInstances"])

    try:
        wait_until_ready(process, http_port, folder / "orthanc.log")
        yield dicom_port, count, process.pid
    finally:
        stop_process(process)


def run_discarding_receiver(port: int) -> None:
    """Serve Viewbox's AE with a C-STORE handler that stores nothing.

    This is the floor that pynetdicom sets: the same association handling
    and temporary files as the receiver, without validation, storage or
    database work.
    """
    sys.path.insert(0, str(REPOSITORY))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "viewbox.settings")
    import django

    django.setup()
    import logging

    from pynetdicom import evt

    # As run_dicom_receiver does: pynetdicom logs every request at INFO.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    from viewbox.ingest.dicom_receiver import STATUS_SUCCESS, build_application_entity

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server = build_application_entity().start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda event: STATUS_SUCCESS)],
    )
    stopping.wait()
    server.shutdown()


@contextmanager
def discarding_receiver(folder: Path) -> Iterator[tuple[int, Callable[[], int], int]]:
    port = free_loopback_port()
    env = {
        **environment(),
        "VIEWBOX_DATA_DIR": str(folder),
        "VIEWBOX_DICOM_CALLING_AE_TITLES": SENDER_AE_TITLE,
    }
    process = subprocess.Popen(
        [PYTHON, __file__, "--discarding-receiver", str(port)],
        env=env,
        preexec_fn=_end_with_parent,
    )
    try:
        wait_for_port(port, process, "the discarding receiver")
        # It stores nothing; the count is what storescu reported as sent.
        yield port, lambda: INSTANCES, process.pid
    finally:
        stop_process(process)


RECEIVERS: Final = {
    "Viewbox": ("VIEWBOX", viewbox_receiver),
    "discard": ("VIEWBOX", discarding_receiver),
    "storescp": ("STORESCP", storescp_receiver),
    "storescp+sync": ("STORESCP", storescp_sync_receiver),
    "Orthanc": ("ORTHANC", orthanc_receiver),
}


def split(files: list[Path], root: Path, parts: int) -> list[Path]:
    """Hard-link the files into parts folders of consecutive instances."""
    folders = []
    size = -(-len(files) // parts)
    for number in range(parts):
        folder = root / f"part{number + 1}"
        folder.mkdir()
        for path in files[number * size : (number + 1) * size]:
            os.link(path, folder / path.name)
        folders.append(folder)
    return folders


def measure(name: str, folders: list[Path], work: Path) -> Run:
    called_ae_title, start = RECEIVERS[name]
    work.mkdir()
    with start(work) as (port, count, pid):
        if name == "Viewbox":
            with RssSampler(pid) as sampler:
                seconds = send(port, called_ae_title, folders)
            rss = sampler.summary()
        else:
            seconds, rss = send(port, called_ae_title, folders), None
        stored = count()
    shutil.rmtree(work)
    if stored != INSTANCES:
        raise SystemExit(f"{name} stored {stored} of {INSTANCES} instances")
    return Run(name, len(folders), seconds, stored, rss)


def report(runs: list[Run], instance_bytes: int) -> None:
    print(
        f"{INSTANCES} CT instances of 512x512 16-bit, "
        f"{instance_bytes / 1e6:.2f} MB each, sent with storescu"
    )
    print(f"{'receiver':<13} {'associations':>12} {'seconds':>8} {'instances/s':>12}")
    print("(discard: Viewbox's AE with a C-STORE handler that stores nothing)")
    print("(storescp+sync: storescp that runs 'sync FILE' after each file)")

    for run in runs:
        print(
            f"{run.receiver:<13} {run.associations:>12} {run.seconds:>8.2f} "
            f"{run.rate:>12.1f}"
        )
    print()
    print("Viewbox receiver RSS, MiB: largest sample of the first, middle and")
    print("last tenth of the run; peak (VmHWM) at its end")
    for run in runs:
        if run.rss_kib is not None:
            start, middle, end, peak = (kib / 1024 for kib in run.rss_kib)
            print(
                f"  {run.associations} association(s): start {start:.0f}, "
                f"middle {middle:.0f}, end {end:.0f}, peak {peak:.0f}"
            )
    print()
    print("Goals (ratio of instances per second)")
    by_key = {(run.receiver, run.associations): run for run in runs}
    for associations in (1, PARALLEL_ASSOCIATIONS):
        viewbox = by_key[("Viewbox", associations)].rate
        for reference, goal in (
            ("storescp", GOAL_FRACTION_OF_STORESCP),
            ("storescp+sync", GOAL_FRACTION_OF_STORESCP),
            ("Orthanc", GOAL_FRACTION_OF_ORTHANC),
        ):
            ratio = viewbox / by_key[(reference, associations)].rate
            verdict = "met" if ratio >= goal else "missed"
            print(
                f"  Viewbox / {reference}, {associations} association(s): "
                f"{ratio:.2f}  at least {goal}: {verdict}"
            )


def main() -> None:
    check_private_network()
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y dcmtk orthanc")
    print(
        f"Python {platform.python_version()}, pydicom {version('pydicom')}, "
        f"pynetdicom {version('pynetdicom')}, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="viewbox-bench-store-") as name:
        root = Path(name)
        exam = root / "exam"
        exam.mkdir()
        files = write_exam(exam, INSTANCES)
        single = [exam]
        parallel = split(files, root, PARALLEL_ASSOCIATIONS)
        read_all(files)
        runs = []
        for folders in (single, parallel):
            for receiver in RECEIVERS:
                runs.append(measure(receiver, folders, root / "work"))
                print(
                    f"  {receiver} over {len(folders)} association(s) done",
                    file=sys.stderr,
                )
        report(runs, files[0].stat().st_size)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--discarding-receiver"]:
        run_discarding_receiver(int(sys.argv[2]))
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        main()
