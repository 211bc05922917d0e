import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from viewbox.audit import chain
from viewbox.audit.actions import record_event
from viewbox.audit.models import AuditChainHead, AuditEvent, AuditLogImmutableError

on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL"
)


def record_three() -> list[AuditEvent]:
    return [
        record_event(
            "report.view",
            actor_kind="account",
            actor_id=7,
            patient_id=3,
            exam_id=number,
            client_address="192.0.2.10",
        )
        for number in (11, 12, 13)
    ]


def run_unchecked_sql(sql: str, params: list[object]) -> None:
    """Run SQL with the append-only trigger out of the way, as an attacker could."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "ALTER TABLE audit_auditevent "
                "DISABLE TRIGGER audit_auditevent_append_only"
            )
            cursor.execute(sql, params)
            cursor.execute(
                "ALTER TABLE audit_auditevent "
                "ENABLE TRIGGER audit_auditevent_append_only"
            )
        else:
            cursor.execute("DROP TRIGGER audit_auditevent_append_only")
            cursor.execute(sql, params)


def verify() -> str:
    """Run verify_audit; return the CommandError's message, or "" if it passed."""
    try:
        call_command("verify_audit")
    except CommandError as error:
        assert error.returncode == 1
        return str(error)
    return ""


@pytest.mark.django_db
class TestEntriesCannotBeChanged:
    def test_saving_a_stored_entry_is_rejected(self) -> None:
        event = record_three()[0]
        event.action = "report.print"
        with pytest.raises(AuditLogImmutableError):
            event.save()
        assert AuditEvent.objects.get(pk=event.pk).action == "report.view"

    def test_deleting_an_entry_is_rejected(self) -> None:
        event = record_three()[0]
        with pytest.raises(AuditLogImmutableError):
            event.delete()
        assert AuditEvent.objects.count() == 3

    def test_queryset_update_is_rejected(self) -> None:
        record_three()
        with pytest.raises(AuditLogImmutableError):
            AuditEvent.objects.filter(exam_id=12).update(patient_id=4)
        assert not AuditEvent.objects.filter(patient_id=4).exists()

    def test_queryset_delete_is_rejected(self) -> None:
        record_three()
        with pytest.raises(AuditLogImmutableError):
            AuditEvent.objects.all().delete()
        assert AuditEvent.objects.count() == 3

    def test_bulk_writes_are_rejected(self) -> None:
        events = record_three()
        with pytest.raises(AuditLogImmutableError):
            AuditEvent.objects.bulk_update(events, ["action"])
        with pytest.raises(AuditLogImmutableError):
            AuditEvent.objects.bulk_create([AuditEvent(action="x")])

    def test_database_rejects_sql_update(self) -> None:
        record_three()
        with pytest.raises(DatabaseError), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("UPDATE audit_auditevent SET patient_id = 4")
        assert not AuditEvent.objects.filter(patient_id=4).exists()

    @on_postgresql
    def test_postgresql_rejects_sql_delete(self) -> None:
        record_three()
        with pytest.raises(DatabaseError), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM audit_auditevent")
        assert AuditEvent.objects.count() == 3


@pytest.mark.django_db
class TestVerifyAudit:
    def test_entry_edited_in_the_database_is_named(self) -> None:
        events = record_three()
        run_unchecked_sql(
            "UPDATE audit_auditevent SET patient_id = 4 WHERE id = %s",
            [events[1].pk],
        )
        message = verify()
        assert message.startswith(
            "Audit chain verification failed at entry #2 "
            f"(id {events[1].pk}): its entry_hash does not match its fields. "
            "Entries verified before it: 1."
        )

    def test_entry_rehashed_without_the_key_is_named(self, settings) -> None:
        events = record_three()
        # Someone with database access but not the key rewrites an entry and
        # computes its hash with a key of their own.
        forged = AuditEvent.objects.get(pk=events[0].pk)
        forged.patient_id = 4
        settings.AUDIT_CHAIN_KEY = "a key the attacker chose"
        run_unchecked_sql(
            "UPDATE audit_auditevent SET patient_id = 4, entry_hash = %s WHERE id = %s",
            [chain.compute_hash(forged), forged.pk],
        )
        settings.AUDIT_CHAIN_KEY = "the server's key"
        assert verify().startswith("Audit chain verification failed at entry #1 ")

    def test_entry_removed_from_the_middle_is_noticed(self) -> None:
        events = record_three()
        run_unchecked_sql("DELETE FROM audit_auditevent WHERE id = %s", [events[1].pk])
        assert verify().startswith(
            "Audit chain verification failed at entry #3 "
            f"(id {events[2].pk}): expected entry #2 here, found #3."
        )

    def test_entry_removed_from_the_end_is_noticed(self) -> None:
        events = record_three()
        run_unchecked_sql("DELETE FROM audit_auditevent WHERE id = %s", [events[2].pk])
        assert verify().startswith(
            "Audit chain verification failed at entry #3: the chain head names "
            "entry #3 but the last stored entry is #2."
        )

    def test_intact_chain_verifies(self, capsys) -> None:
        events = record_three()
        assert verify() == ""
        output = capsys.readouterr().out
        assert output == (
            f"Audit chain verified: 3 entries, last hash {events[2].entry_hash}\n"
        )

    def test_empty_log_verifies(self, capsys) -> None:
        assert verify() == ""
        assert "Audit chain verified: 0 entries" in capsys.readouterr().out

    def test_entries_chain_to_their_predecessor(self) -> None:
        events = record_three()
        assert [event.sequence for event in events] == [1, 2, 3]
        assert events[0].previous_hash == chain.GENESIS_HASH
        assert events[1].previous_hash == events[0].entry_hash
        assert events[2].previous_hash == events[1].entry_hash
        head = AuditChainHead.objects.get()
        assert head.entry_hash == events[2].entry_hash

    def test_rolled_back_entry_leaves_no_gap(self) -> None:
        record_event("exam.list")
        with pytest.raises(RuntimeError), transaction.atomic():
            record_event("exam.list")
            raise RuntimeError("the caller's transaction fails")
        later = record_event("exam.list")
        assert later.sequence == 2
        assert verify() == ""

    def test_client_address_spelling_does_not_change_the_hash(self) -> None:
        event = record_event("exam.list", client_address="::FFFF:192.0.2.1")
        stored = AuditEvent.objects.get(pk=event.pk)
        assert chain.compute_hash(stored) == event.entry_hash


@on_postgresql
@pytest.mark.django_db(transaction=True)
class TestConcurrentAppends:
    def test_two_threads_keep_the_chain_valid(self) -> None:
        per_thread = 40
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def append(actor_id: int) -> None:
            try:
                start.wait()
                for _number in range(per_thread):
                    # Each append is its own transaction, as in a web request.
                    record_event("exam.list", actor_kind="account", actor_id=actor_id)
            except BaseException as error:
                errors.append(error)
            finally:
                connection.close()

        threads = [threading.Thread(target=append, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        checked, problem = chain.find_first_problem()
        assert problem is None
        assert checked == 2 * per_thread
        sequences = list(AuditEvent.objects.values_list("sequence", flat=True))
        assert sequences == list(range(1, 2 * per_thread + 1))
