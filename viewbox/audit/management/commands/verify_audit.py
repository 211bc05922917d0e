import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from viewbox.audit.chain import find_first_problem
from viewbox.audit.models import AuditChainHead

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chain with the server's AUDIT_CHAIN_KEY. "
        "Prints the number of entries checked and the hash of the last one; "
        "keep that hash somewhere outside the database, because it lets a "
        "later run prove that no entries were removed from the end. Exits "
        "with status 1 and names the first broken entry if the chain does "
        "not verify."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        checked, problem = find_first_problem()
        if problem is not None:
            logger.error(
                "Audit chain verification failed at entry #%s: %s",
                problem.sequence,
                problem.reason,
            )
            where = f"entry #{problem.sequence}"
            if problem.event_id is not None:
                where += f" (id {problem.event_id})"
            raise CommandError(
                f"Audit chain verification failed at {where}: {problem.reason}. "
                f"Entries verified before it: {checked}.",
                returncode=1,
            )

        head = AuditChainHead.objects.filter(pk=AuditChainHead.SINGLETON_ID).first()
        last_hash = head.entry_hash if head and head.entry_hash else "(none)"
        self.stdout.write(
            f"Audit chain verified: {checked} entries, last hash {last_hash}"
        )
