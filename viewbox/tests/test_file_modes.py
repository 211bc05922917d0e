"""Files that hold health information are readable by the service's user alone."""

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from viewbox.ingest.dicom_import import import_dicom_file
from viewbox.ingest.tests.test_dicom_import import CT, write_copy

REPO = Path(__file__).resolve().parents[2]


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run the test with the umask of a usual login shell."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.django_db
@pytest.mark.usefixtures("open_umask")
class TestStoredFiles:
    @pytest.mark.parametrize("move", [False, True])
    def test_imported_file_is_private(self, tmp_path, move) -> None:
        path = write_copy(CT, tmp_path / "ct.dcm", "DEMO-1001", "ACC-MODE-1")
        assert mode(path) == 0o644
        result = import_dicom_file(path, move=move)
        assert result.instance is not None
        assert mode(default_storage.path(result.instance.file)) == 0o600

    def test_file_saved_through_storage_is_private(self) -> None:
        name = default_storage.save("packages/test-mode/a.zip", ContentFile(b"zip"))
        try:
            assert mode(default_storage.path(name)) == 0o600
            assert mode(Path(default_storage.path(name)).parent) == 0o700
        finally:
            default_storage.delete(name)


def test_commands_create_private_files(tmp_path) -> None:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("VIEWBOX_")
    }
    database = tmp_path / "db.sqlite3"
    environment.update(
        VIEWBOX_DATA_DIR=str(tmp_path), VIEWBOX_DATABASE_URL=f"sqlite:///{database}"
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"],
        cwd=REPO,
        env=environment,
        check=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert mode(database) == 0o600
