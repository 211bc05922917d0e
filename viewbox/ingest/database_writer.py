"""The receiver's database writer: one thread that commits in groups.

Association threads hand their database changes to the writer, so that the
rows of instances that arrive together over several associations are
committed in one transaction (group commit), and associations do not queue
on SQLite's write lock.
"""

import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, cast

from django.db import DatabaseError, connection, transaction

from viewbox.ingest.dicom_import import CheckedFile, study_and_series_for
from viewbox.records.models import Series, Study
from viewbox.viewer.tasks import render_previews_of_instances

logger = logging.getLogger(__name__)

# Maximum number of jobs that the writer commits in one transaction. A batch
# is what queued while the previous commit ran. With four associations,
# bench/store.py measured 1.2 to 1.4 jobs per batch on average.
_MAXIMUM_BATCH: Final = 64
# Series whose study and series rows the writer keeps, so that the instances
# after the first of a series need no lookup of them.
_CACHED_SERIES: Final = 256
# Seconds between two looks for the exam of a cached study that has none.
# The study is matched anyway when its order arrives (attach_waiting_studies);
# the look covers an order that arrived while the study row was created.
_EXAM_CHECK_SECONDS: Final = 1.0
# The writer queues one preview task for the instances it stored, once the
# oldest of them waited this many seconds or there are this many.
_PREVIEW_SECONDS: Final = 1.0
_PREVIEW_INSTANCES: Final = 64


def turn_lock_path() -> Path | None:
    """Return the lock file that receiver processes take turns to write with.

    Only an SQLite database in a file has one. SQLite admits one writer at
    a time, and its default busy handler (sqliteDefaultBusyCallback in its
    main.c) sleeps 1, 2, 5, 10 ms and longer between tries. Receiver
    processes that wait for an flock(2) lock on this file are woken as soon
    as the holder releases it. Other writers, such as the web server, still
    wait as SQLite does.
    """
    if connection.vendor != "sqlite":
        return None
    name = str(connection.settings_dict["NAME"])
    if name == ":memory:" or "mode=memory" in name:
        return None
    return Path(f"{name}.receivers.lock")


def drop_broken_connection() -> None:
    # A connection is kept for a whole association, and the writer's for the
    # receiver's life: opening one per instance, and on SQLite the checkpoint
    # when the last one closes, would cost more than storing the instance.
    # Only a broken one is replaced. It is tested only after a database
    # error, because on PostgreSQL the test is a query: a connection that
    # broke silently fails one request, whose sender retries, and is
    # replaced before the next.
    if connection.connection is not None and connection.errors_occurred:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()


class _Job[T]:
    def __init__(self, function: Callable[[], T]) -> None:
        self.function = function
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        # Set for a job submitted after the writer stopped, which wait() runs.
        self.inline = False


class DatabaseWriter:
    """Run the receiver's database changes in one thread, with group commit.

    ``run`` returns only once the transaction that contains the job's
    changes is committed. In a batch of several jobs each runs in a
    savepoint, so that a failed job leaves the others unchanged. When the
    commit fails, every job of the batch fails with that error.
    """

    def __init__(self, turn_lock: Path | None = None) -> None:
        self._turn_lock_path = turn_lock
        self._turn_lock: int | None = None
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        # Guards _stopped against a job queued while the thread ends.
        self._stopping_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run_batches, name="dicom-receiver-writer", daemon=True
        )
        # Series Instance UID to its study and series rows.
        self._series: dict[str, tuple[Study, Series]] = {}
        # Study primary key to when the writer last looked for its exam.
        self._exam_checked_at: dict[int, float] = {}
        self._series_lock = threading.Lock()
        # Instances whose previews are not queued yet, and since when.
        # Used only in the writer's thread.
        self._previews: list[int] = []
        self._previews_since = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Commit the jobs already queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def submit[T](self, function: Callable[[], T]) -> "_Job[T]":
        """Queue function for the writer's thread; wait() returns its result."""
        job = _Job(function)
        with self._stopping_lock:
            job.inline = self._stopped
            if not job.inline:
                self._queue.put(job)
        return job

    def wait[T](self, job: "_Job[T]") -> T:
        """Return the result of a submitted job once its transaction committed."""
        if job.inline:
            # A request that outlived the server: run it here, alone.
            with transaction.atomic():
                return job.function()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return cast(T, job.result)

    def run[T](self, function: Callable[[], T]) -> T:
        """Run function in the writer's thread and transaction; return its result."""
        return self.wait(self.submit(function))

    def study_and_series(self, checked: CheckedFile) -> tuple[Study, Series]:
        """Return the rows of the file's study and series, created if new.

        The rows of a series seen before come from memory when the file's
        study and identifiers match them. The Accession Number and Patient
        ID of a study never change, so the check against them stays valid.
        """
        with self._series_lock:
            cached = self._series.get(checked.series_instance_uid)
        if cached is not None:
            study, series = cached
            if (
                study.study_instance_uid == checked.study_instance_uid
                and (study.accession_number, study.patient_id)
                == checked.study_identifiers
            ):
                return cached
        study, series = self.run(lambda: study_and_series_for(checked))
        with self._series_lock:
            if len(self._series) >= _CACHED_SERIES:
                self._series.clear()
                self._exam_checked_at.clear()
            self._series[series.series_instance_uid] = (study, series)
        return study, series

    def forget_series(self) -> None:
        """Drop the remembered rows, after an error that may concern them."""
        with self._series_lock:
            self._series.clear()
            self._exam_checked_at.clear()

    def exam_check_due(self, study: Study) -> bool:
        """Return whether to look again for an unmatched study's exam.

        Each look costs two queries, so an unmatched study is looked at once
        per _EXAM_CHECK_SECONDS instead of once per instance.
        """
        now = time.monotonic()
        with self._series_lock:
            checked_at = self._exam_checked_at.get(study.pk)
            if checked_at is not None and now - checked_at < _EXAM_CHECK_SECONDS:
                return False
            self._exam_checked_at[study.pk] = now
            return True

    def add_preview(self, instance_id: int) -> None:
        """Queue the previews of a stored instance with the next preview task.

        Call from a job, in the writer's thread.
        """
        if not self._previews:
            self._previews_since = time.monotonic()
        self._previews.append(instance_id)

    def _queue_previews(self) -> None:
        # NOTE: when the transaction of this job fails, these instances get
        # no preview task; their previews are rendered when first viewed.
        instance_ids, self._previews = self._previews, []
        render_previews_of_instances.enqueue(instance_ids)

    def _previews_due(self) -> bool:
        return bool(self._previews) and (
            len(self._previews) >= _PREVIEW_INSTANCES
            or time.monotonic() - self._previews_since >= _PREVIEW_SECONDS
        )

    def _run_batches(self) -> None:
        try:
            while True:
                timeout = None
                if self._previews:
                    waited = time.monotonic() - self._previews_since
                    timeout = max(_PREVIEW_SECONDS - waited, 0.0)
                try:
                    job = self._queue.get(timeout=timeout)
                except queue.Empty:
                    self._commit([_Job(self._queue_previews)])
                    continue
                if job is None:
                    return
                batch = [job]
                while len(batch) < _MAXIMUM_BATCH:
                    try:
                        queued = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if queued is None:
                        self._queue.put(None)
                        break
                    batch.append(queued)
                self._commit(batch)
                if self._previews_due():
                    self._commit([_Job(self._queue_previews)])
        finally:
            # Jobs queued after the stop request are still committed.
            with self._stopping_lock:
                self._stopped = True
            while True:
                try:
                    late = self._queue.get_nowait()
                except queue.Empty:
                    break
                if late is not None:
                    self._commit([late])
            if self._previews:
                self._commit([_Job(self._queue_previews)])
            connection.close()
            if self._turn_lock is not None:
                os.close(self._turn_lock)
                self._turn_lock = None

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """Hold the turn lock, if any, so that other receiver processes wait.

        Without the lock file, or when locking it fails, commits still work,
        with SQLite's own waiting.
        """
        if self._turn_lock is None and self._turn_lock_path is not None:
            path, self._turn_lock_path = self._turn_lock_path, None
            try:
                self._turn_lock = os.open(
                    path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
            except OSError as error:
                logger.warning(
                    "Could not open the receivers' lock file %s: %s", path, error
                )
        locked = False
        if self._turn_lock is not None:
            try:
                fcntl.flock(self._turn_lock, fcntl.LOCK_EX)
                locked = True
            except OSError as error:
                logger.warning("Could not lock the receivers' lock file: %s", error)
                os.close(self._turn_lock)
                self._turn_lock = None
        try:
            yield
        finally:
            if locked and self._turn_lock is not None:
                fcntl.flock(self._turn_lock, fcntl.LOCK_UN)

    def _commit(self, batch: list[_Job[Any]]) -> None:
        drop_broken_connection()
        committed = False
        try:
            with self._turn(), transaction.atomic():
                if len(batch) == 1:
                    # No other job to protect: its error rolls back the whole
                    # transaction, without the statements of a savepoint.
                    _run_job(batch[0])
                else:
                    for job in batch:
                        try:
                            with transaction.atomic():
                                _run_job(job)
                        except _JobFailed:
                            continue
            committed = True
        except _JobFailed:
            pass  # The job's own error is in the job, and nothing was written.
        except Exception as error:
            logger.error(
                "Could not commit %d received instances: %s",
                len(batch),
                type(error).__name__,
            )
            for job in batch:
                if job.error is None:
                    job.error = error
        finally:
            for job in batch:
                if not committed and job.error is None:
                    # Reached only by an exception that is not an Exception.
                    job.error = DatabaseError("The batch was not committed")
                job.done.set()


def _run_job(job: _Job[Any]) -> None:
    try:
        job.result = job.function()
    except Exception as error:
        job.error = error
        # Leave the savepoint or transaction around the job by an exception,
        # so that its changes are rolled back.
        raise _JobFailed from error


class _JobFailed(Exception):
    pass
