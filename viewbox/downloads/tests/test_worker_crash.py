"""Package workers as real processes: one killed mid-build, two sharing a queue.

Everything runs on a database of its own with the demo loaded. A
`db_worker` starts building the 120-frame ultrasound package and is killed
with SIGKILL. The package must not be marked ready, and after the
maintenance command requeues it, a second worker finishes it.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from viewbox.browser_fixtures import (
    REPO,
    drop_separate_database,
    separate_database_url,
)

STALL_SECONDS = 2
TIMEOUT_SECONDS = 180


class Site:
    """The processes' shared data folder and database, and ways to reach them."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.database_url = separate_database_url(data_dir, "crash")
        self.env = {
            **os.environ,
            "VIEWBOX_DATA_DIR": str(data_dir),
            "VIEWBOX_DATABASE_URL": self.database_url,
            "VIEWBOX_PACKAGE_STALL_SECONDS": str(STALL_SECONDS),
        }

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, str(REPO / "manage.py"), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def start_worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "db_worker", "--interval", "0.2"],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def is_writing(self, package_id: int) -> bool:
        """Return whether the package is preparing and its partial file exists."""
        partial = list((self.data_dir / "media" / "packages").glob(".*.partial"))
        return bool(partial) and self.package_row(package_id)[0] == "preparing"

    def package_row(self, package_id: int) -> tuple[str, int, str]:
        query = "SELECT status, progress, file FROM downloads_package WHERE id = %s"
        if self.database_url.startswith("sqlite"):
            path = self.database_url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as connection:
                row = connection.execute(
                    query.replace("%s", "?"), (package_id,)
                ).fetchone()
        else:
            import psycopg

            with psycopg.connect(
                self.database_url.replace("postgres://", "postgresql://")
            ) as c:
                row = c.execute(query, (package_id,)).fetchone()
        assert row is not None
        return row[0], row[1], row[2]


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path)
    site.manage("migrate", "-v0")
    site.manage("load_demo")
    yield site
    drop_separate_database(site.database_url)


REQUEST_PACKAGE = """
from viewbox.downloads.models import Package
from viewbox.downloads.tasks import prepare_package
from viewbox.records.models import Exam
exam = Exam.objects.get(accession_number="DEMOUS2002")
package = Package.objects.create(exam=exam, format="zip")
prepare_package.enqueue(package.pk)
print(package.pk)
"""


@pytest.mark.slow
class TestWorkerKilledMidTask:
    def test_killed_worker_build_is_retried(self, site: Site) -> None:
        package_id = int(site.manage("shell", "-c", REQUEST_PACKAGE).split()[-1])
        worker = site.start_worker()
        try:
            wait_for(lambda: site.is_writing(package_id), "the worker to start writing")
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        finally:
            if worker.poll() is None:
                worker.kill()

        status, _, file_name = site.package_row(package_id)
        assert status == "preparing"
        assert file_name == ""
        assert not list((site.data_dir / "media" / "packages").glob("*.zip"))

        packages = site.data_dir / "media" / "packages"
        assert len(list(packages.glob(".*.partial"))) == 1
        time.sleep(STALL_SECONDS + 1)
        assert "1 requeued" in site.manage("download_maintenance")
        assert not list(packages.glob(".*.partial"))
        second = site.start_worker()
        try:
            wait_for(lambda: site.package_row(package_id)[0] == "ready", "the retry")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)

        _, progress, file_name = site.package_row(package_id)
        assert progress == 100
        package_path = site.data_dir / "media" / file_name
        with zipfile.ZipFile(package_path) as archive:
            names = archive.namelist()
        assert "DICOMDIR" in names
        dicom_files = [
            n for n in names if n.startswith("DICOM/") and not n.endswith("/")
        ]
        assert len(dicom_files) == 2


REQUEST_MANY = """
from viewbox.downloads.models import Package
from viewbox.downloads.tasks import prepare_package
from viewbox.records.models import Exam
for exam in Exam.objects.filter(status="completed"):
    for fmt in ("zip", "iso"):
        package = Package.objects.create(exam=exam, format=fmt)
        prepare_package.enqueue(package.pk)
print(Package.objects.count())
"""

COUNT_ATTEMPTS = """
from viewbox.downloads.models import Package
print(sorted(Package.objects.values_list("status", "attempts")))
"""


@pytest.mark.slow
class TestSeveralWorkers:
    def test_two_workers_never_build_the_same_package(self, site: Site) -> None:
        total = int(site.manage("shell", "-c", REQUEST_MANY).split()[-1])
        workers = [site.start_worker(), site.start_worker()]
        try:
            wait_for(
                lambda: (
                    "preparing"
                    not in (rows := site.manage("shell", "-c", COUNT_ATTEMPTS))
                    and "queued" not in rows
                ),
                "both workers to finish",
            )
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)
        # The shell prints a line about imported objects first.
        rows = site.manage("shell", "-c", COUNT_ATTEMPTS).strip().splitlines()[-1]
        assert rows == str(sorted([("ready", 1)] * total))
