"""Chain every audit entry to the one before it with a keyed hash.

Entries stored before this migration are chained in the order they were
written, with the key the server has now.
"""

from django.db import migrations, models


def chain_existing_entries(apps, schema_editor):
    from viewbox.audit import chain

    AuditEvent = apps.get_model("audit", "AuditEvent")
    AuditChainHead = apps.get_model("audit", "AuditChainHead")
    previous_hash = chain.GENESIS_HASH
    sequence = 0
    for event in AuditEvent.objects.order_by("at", "pk").iterator():
        sequence += 1
        event.sequence = sequence
        event.previous_hash = previous_hash
        event.entry_hash = chain.compute_hash(event)
        event.save(update_fields=["sequence", "previous_hash", "entry_hash"])
        previous_hash = event.entry_hash
    AuditChainHead.objects.create(
        pk=1, sequence=sequence, entry_hash=previous_hash if sequence else ""
    )


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditChainHead",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("sequence", models.BigIntegerField(default=0)),
                ("entry_hash", models.CharField(blank=True, max_length=64)),
            ],
        ),
        migrations.AddField(
            model_name="auditevent",
            name="sequence",
            field=models.BigIntegerField(null=True),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="share_link_id",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="previous_hash",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="entry_hash",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.RunPython(chain_existing_entries, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="auditevent",
            name="sequence",
            field=models.BigIntegerField(unique=True),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="patient_id",
            field=models.BigIntegerField(blank=True, db_index=True, null=True),
        ),
        migrations.AlterModelOptions(
            name="auditevent",
            options={
                "ordering": ["sequence"],
                "permissions": [("export_auditevent", "Can export audit events as CSV")],
            },
        ),
    ]
