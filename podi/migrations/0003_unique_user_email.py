"""One account per email, case-insensitively: a unique index on LOWER(email) for non-empty emails.

Existing duplicates are resolved first: the oldest account (lowest id: the one email login
already picked) keeps the email, the others lose it (they still log in by username). Every
change is printed, so the operator can tell those users.
"""

from django.db import migrations
from django.db.models.functions import Lower

INDEX = "podi_auth_user_email_ci_unique"


def clear_duplicate_emails(apps, schema_editor):
    User = apps.get_model("auth", "User")
    holder: dict[str, int] = {}
    cleared = []
    for pk, email, lowered in (
        User.objects.exclude(email="")
        .annotate(lowered=Lower("email"))
        .order_by("pk")
        .values_list("pk", "email", "lowered")
    ):
        if lowered in holder:
            cleared.append((pk, email, holder[lowered]))
        else:
            holder[lowered] = pk
    for pk, email, kept_by in cleared:
        User.objects.filter(pk=pk).update(email="")
        print(f"\n  podi: user {pk} lost email {email!r}, already used by user {kept_by}", end="")


class Migration(migrations.Migration):
    dependencies = [
        ("podi", "0002_servicekey_webhook_secret"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.RunPython(clear_duplicate_emails, migrations.RunPython.noop),
        migrations.RunSQL(
            f"CREATE UNIQUE INDEX {INDEX} ON auth_user (LOWER(email)) WHERE email <> ''",
            f"DROP INDEX {INDEX}",
        ),
    ]
