from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from viewbox.audit.chain import GENESIS_HASH, find_first_problem
from viewbox.audit.models import AuditChainHead, AuditEvent


def migrate_audit_to(name: str) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("audit", name)])


@pytest.mark.django_db(transaction=True)
class TestChainMigration:
    def test_entries_stored_before_the_chain_are_chained(self) -> None:
        migrate_audit_to("0001_initial")
        try:
            with connection.cursor() as cursor:
                for minute in (3, 1, 2):
                    cursor.execute(
                        "INSERT INTO audit_auditevent (at, actor_kind, actor_id, "
                        "patient_id, action, outcome) VALUES (%s, %s, %s, %s, %s, %s)",
                        [
                            datetime(2026, 12, 1, 9, minute, tzinfo=UTC),
                            "account",
                            str(minute),
                            5,
                            "report.view",
                            "success",
                        ],
                    )
        finally:
            migrate_audit_to("0004_auditors_group")

        checked, problem = find_first_problem()
        assert problem is None
        assert checked == 3
        # Entries are chained in the order they were written.
        events = list(AuditEvent.objects.all())
        assert [event.actor_id for event in events] == ["1", "2", "3"]
        assert events[0].previous_hash == GENESIS_HASH
        assert AuditChainHead.objects.get().entry_hash == events[-1].entry_hash
