"""Make the database itself reject UPDATE and DELETE on audit entries.

PostgreSQL gets a trigger for both. SQLite gets a trigger for UPDATE only,
because Django empties SQLite tables with DELETE between tests; a removed
entry still breaks the hash chain, which `manage.py verify_audit` reports.
TRUNCATE is left to database privileges (the application's role should not
own the table), since Django's test runner empties PostgreSQL tables with it.
"""

from django.db import migrations

POSTGRESQL_CREATE = """
CREATE OR REPLACE FUNCTION audit_reject_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit entries cannot be changed or deleted (% on %)',
        TG_OP, TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_auditevent_append_only
    BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
"""
POSTGRESQL_DROP = """
DROP TRIGGER IF EXISTS audit_auditevent_append_only ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_reject_change();
"""
SQLITE_CREATE = """
CREATE TRIGGER audit_auditevent_append_only
BEFORE UPDATE ON audit_auditevent
BEGIN
    SELECT RAISE(ABORT, 'audit entries cannot be changed');
END;
"""
SQLITE_DROP = "DROP TRIGGER IF EXISTS audit_auditevent_append_only;"


def _run(schema_editor, statements):
    sql = statements.get(schema_editor.connection.vendor)
    if sql:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(sql)


def create_triggers(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRESQL_CREATE, "sqlite": SQLITE_CREATE})


def drop_triggers(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRESQL_DROP, "sqlite": SQLITE_DROP})


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0002_chain"),
    ]

    operations = [
        migrations.RunPython(create_triggers, drop_triggers),
    ]
