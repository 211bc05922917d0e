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
# The local PostgreSQL server, and the benchmark's own database on it,
# dropped and created for each run. The benchmark runs in a network
# namespace of its own, so it reaches the server through its Unix socket.
POSTGRESQL_SOCKET_FOLDER: Final = os.environ.get(
    "VIEWBOX_BENCH_POSTGRES_SOCKET", "/var/run/postgresql"
)
POSTGRESQL_DATABASE: Final = "viewbox_bench_store"
# The folder of the instances and of every receiver's storage. Builds and
# tests create and delete files in /tmp all day. On this machine, creating
# a file there took 0.5 ms of CPU, mostly in ext4's search for a free inode.
# In a new folder elsewhere on the same disk it took 0.02 ms.
WORK_FOLDER: Final = Path(
    os.environ.get("VIEWBOX_BENCH_FOLDER", REPOSITORY / "var" / "bench")
)


def spread_new_folders(folder: Path) -> None:
    """Have ext4 place each new folder inside folder in a block group of its own.

    The "T" attribute (chattr(1)) marks folder as the top of a hierarchy for
    ext4's Orlov allocator. Without it, a new folder usually shares its
    parent's group, where the previous benchmark deleted 9 GB of files.
    Creating a file there took 0.2 ms of CPU instead of 0.02 ms for more
    than a minute. Other file systems ignore or refuse the attribute.
    """
    if shutil.which("chattr") is not None:
        subprocess.run(["chattr", "+T", str(folder)], capture_output=True, check=False)


def postgresql_url(database: str) -> str:
    return f"postgres://postgres@/{database}?host={POSTGRESQL_SOCKET_FOLDER}"


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
    """Sample the VmRSS of a process and its children from /proc while a run lasts."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _processes(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        return [self.pid, *map(int, children.split())]

    def _status_kib(self, field: str) -> int:
        """Return the sum of a /proc/PID/status field over the processes."""
        total = 0
        for pid in self._processes():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        return total

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
def viewbox_receiver(
    folder: Path, postgresql: bool = False
) -> Iterator[tuple[int, Callable[[], int], int]]:
    """Start manage.py run_dicom_receiver on a new SQLite or PostgreSQL database."""
    data = folder / "data"
    data.mkdir()
    database_url = f"sqlite:///{data / 'db.sqlite3'}"
    if postgresql:
        recreate_postgresql_database()
        database_url = postgresql_url(POSTGRESQL_DATABASE)
    env = {
        **environment(),
        "VIEWBOX_DATA_DIR": str(data),
        "VIEWBOX_DATABASE_URL": database_url,
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
        if postgresql:
            import psycopg

            with psycopg.connect(database_url) as database:
                row = database.execute(
                    "SELECT COUNT(*) FROM records_instance"
                ).fetchone()
        else:
            with sqlite3.connect(data / "db.sqlite3") as database:
                row = database.execute(
                    "SELECT COUNT(*) FROM records_instance"
                ).fetchone()
        return int(row[0]) if row else 0

    try:
        wait_for_port(port, process, "run_dicom_receiver")
        yield port, count, process.pid
    finally:
        stop_process(process)
        log.close()


def recreate_postgresql_database() -> None:
    import psycopg

    with psycopg.connect(postgresql_url("postgres"), autocommit=True) as server:
        server.execute(f"DROP DATABASE IF EXISTS {POSTGRESQL_DATABASE}")
        server.execute(f"CREATE DATABASE {POSTGRESQL_DATABASE}")


def viewbox_postgresql_receiver(
    folder: Path,
) -> AbstractContextManager[tuple[int, Callable[[], int], int]]:
    return viewbox_receiver(folder, postgresql=True)


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


def _set_up_django() -> None:
    sys.path.insert(0, str(REPOSITORY))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "viewbox.settings")
    import django

    django.setup()


def run_discarding_receiver(port: int) -> None:
    """Serve Viewbox's Storage SCP with a store callback that keeps nothing.

    This is the floor that the network layer sets: the same associations and
    staging files as the receiver, without validation, storage or database
    work.
    """
    _set_up_django()
    from viewbox.ingest.dicom_network import StoreResult
    from viewbox.ingest.dicom_receiver import start_receiver

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server = start_receiver("127.0.0.1", port)
    server.store = lambda received: StoreResult(0x0000)
    stopping.wait()
    server.shutdown()


def run_pynetdicom_receiver(port: int) -> None:
    """Serve pynetdicom's Storage SCP with a handler that keeps nothing.

    It accepts the same contexts with the same PDU size and writes each data
    set to a temporary file, as the receiver did before it had its own
    network layer.
    """
    _set_up_django()
    import logging

    from pynetdicom import AE, _config, evt

    from viewbox.ingest.dicom_network import MAXIMUM_PDU_LENGTH
    from viewbox.ingest.dicom_receiver import (
        STORAGE_SOP_CLASSES,
        TRANSFER_SYNTAXES,
        VERIFICATION_SOP_CLASS,
    )

    # pynetdicom logs every request at INFO.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    _config.STORE_RECV_CHUNKED_DATASET = True
    application_entity = AE(ae_title="VIEWBOX")
    application_entity.require_calling_aet = [SENDER_AE_TITLE]
    application_entity.maximum_pdu_size = MAXIMUM_PDU_LENGTH
    application_entity.add_supported_context(VERIFICATION_SOP_CLASS)
    for sop_class in STORAGE_SOP_CLASSES:
        application_entity.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server = application_entity.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    assert server is not None  # start_server returns it when block is False
    stopping.wait()
    server.shutdown()


@contextmanager
def discarding_receiver(
    folder: Path, option: str = "--discarding-receiver"
) -> Iterator[tuple[int, Callable[[], int], int]]:
    port = free_loopback_port()
    env = {
        **environment(),
        "VIEWBOX_DATA_DIR": str(folder),
        "VIEWBOX_DICOM_CALLING_AE_TITLES": SENDER_AE_TITLE,
    }
    process = subprocess.Popen(
        [PYTHON, __file__, option, str(port)],
        env=env,
        preexec_fn=_end_with_parent,
    )
    try:
        wait_for_port(port, process, "the discarding receiver")
        # It stores nothing; the count is what storescu reported as sent.
        yield port, lambda: INSTANCES, process.pid
    finally:
        stop_process(process)


def pynetdicom_receiver(
    folder: Path,
) -> AbstractContextManager[tuple[int, Callable[[], int], int]]:
    return discarding_receiver(folder, "--pynetdicom-receiver")


RECEIVERS: Final = {
    "Viewbox": ("VIEWBOX", viewbox_receiver),
    "Viewbox PG": ("VIEWBOX", viewbox_postgresql_receiver),
    "discard": ("VIEWBOX", discarding_receiver),
    "pynetdicom": ("VIEWBOX", pynetdicom_receiver),
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
        if name.startswith("Viewbox"):
            with RssSampler(pid) as sampler:
                seconds = send(port, called_ae_title, folders)
            rss = sampler.summary()
        else:
            seconds, rss = send(port, called_ae_title, folders), None
        stored = count()
    if stored != INSTANCES:
        raise SystemExit(f"{name} stored {stored} of {INSTANCES} instances")
    return Run(name, len(folders), seconds, stored, rss)


def _write_durably(files: list[Path], output: Path) -> None:
    for path in files:
        partial = output / f".{path.name}.partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, path.read_bytes())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(partial, output / path.name)
        folder = os.open(output, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def measure_disk_floor(folders: list[Path], work: Path) -> Run:
    """Time the disk work of a crash-safe receiver for each instance.

    A thread per folder writes each file, fsyncs it, renames it into place
    and fsyncs its folder, with no network and no database, in one run with
    the receivers. A receiver that overlaps these waits with each other or
    with its own work can beat it, so it is a reference, not a limit.
    """
    work.mkdir()
    threads = []
    for number, folder in enumerate(folders):
        output = work / str(number)
        output.mkdir()
        files = sorted(folder.iterdir())
        threads.append(threading.Thread(target=_write_durably, args=(files, output)))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    stored = sum(1 for path in work.rglob("*") if path.is_file())
    return Run("disk floor", len(folders), seconds, stored)


def report(runs: list[Run], instance_bytes: int) -> None:
    print(
        f"{INSTANCES} CT instances of 512x512 16-bit, "
        f"{instance_bytes / 1e6:.2f} MB each, sent with storescu"
    )
    print(f"{'receiver':<13} {'associations':>12} {'seconds':>8} {'instances/s':>12}")
    print("(Viewbox: on SQLite; Viewbox PG: on PostgreSQL; both with two")
    print(" receiver processes per CPU)")
    print("(discard: Viewbox's network layer, storing nothing)")
    print("(pynetdicom: pynetdicom 3's Storage SCP, storing nothing)")
    print("(storescp+sync: storescp that runs 'sync FILE' after each file)")
    print("(disk floor: write, fsync, rename and fsync the folder; no network)")

    for run in runs:
        print(
            f"{run.receiver:<13} {run.associations:>12} {run.seconds:>8.2f} "
            f"{run.rate:>12.1f}"
        )
    print()
    print("Viewbox receiver RSS, MiB: largest sample of the first, middle and")
    print("last tenth of the run; peak: sum of the processes' VmHWM at its end")
    for run in runs:
        if run.rss_kib is not None:
            start, middle, end, peak = (kib / 1024 for kib in run.rss_kib)
            print(
                f"  {run.receiver}, {run.associations} association(s): start "
                f"{start:.0f}, middle {middle:.0f}, end {end:.0f}, peak {peak:.0f}"
            )
    print()
    print("Goals (ratio of instances per second)")
    by_key = {(run.receiver, run.associations): run for run in runs}
    for associations in (1, PARALLEL_ASSOCIATIONS):
        for viewbox in ("Viewbox", "Viewbox PG"):
            rate = by_key[(viewbox, associations)].rate
            for reference, goal in (
                ("storescp", GOAL_FRACTION_OF_STORESCP),
                ("storescp+sync", GOAL_FRACTION_OF_STORESCP),
                ("Orthanc", GOAL_FRACTION_OF_ORTHANC),
            ):
                ratio = rate / by_key[(reference, associations)].rate
                verdict = "met" if ratio >= goal else "missed"
                print(
                    f"  {viewbox} / {reference}, {associations} association(s): "
                    f"{ratio:.2f}  at least {goal}: {verdict}"
                )
        floor = by_key[("disk floor", associations)].rate
        storescp = by_key[("storescp", associations)].rate
        print(
            f"  disk floor / storescp, {associations} association(s): "
            f"{floor / storescp:.2f}  (writing and fsyncing alone, without overlap)"
        )
        for viewbox in ("Viewbox", "Viewbox PG"):
            rate = by_key[(viewbox, associations)].rate
            print(
                f"  {viewbox} / disk floor, {associations} association(s): "
                f"{rate / floor:.2f}"
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
    WORK_FOLDER.mkdir(parents=True, exist_ok=True)
    spread_new_folders(WORK_FOLDER)
    with tempfile.TemporaryDirectory(prefix="store-", dir=WORK_FOLDER) as name:
        root = Path(name)
        spread_new_folders(root)
        exam = root / "exam"
        exam.mkdir()
        files = write_exam(exam, INSTANCES)
        single = [exam]
        parallel = split(files, root, PARALLEL_ASSOCIATIONS)
        read_all(files)
        runs = []
        # Each run stores into a folder of its own, kept until the end (about
        # 9 GB in all). Right after 1,000 files were deleted, creating files
        # in the same place cost far more CPU (see WORK_FOLDER), and the next
        # receiver paid for the last one's cleanup. The sync starts each run
        # with no earlier run's data still to write.
        for folders in (single, parallel):
            for receiver in RECEIVERS:
                os.sync()
                runs.append(measure(receiver, folders, root / f"run{len(runs)}"))
                print(
                    f"  {receiver} over {len(folders)} association(s) done",
                    file=sys.stderr,
                )
            os.sync()
            runs.append(measure_disk_floor(folders, root / f"run{len(runs)}"))
        report(runs, files[0].stat().st_size)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--discarding-receiver"]:
        run_discarding_receiver(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--pynetdicom-receiver"]:
        run_pynetdicom_receiver(int(sys.argv[2]))
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        main()
