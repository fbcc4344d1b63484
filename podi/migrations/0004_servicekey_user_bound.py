"""``ServiceKey.user_bound``: keys created for a real user act only for that user.

Until now the two kinds of key were told apart by nothing but their account: a key created
without ``--user`` got a fresh ``svc-<name>`` account with an unusable password. Existing keys are
classified the same way: such an account → a service-account key, any other user → user-bound.
"""

from django.db import migrations, models


def classify(apps, schema_editor):
    ServiceKey = apps.get_model("podi", "ServiceKey")
    for key in ServiceKey.objects.select_related("user").iterator():
        # An unusable password is stored as "!" + random characters.
        service_account = key.user.username.startswith("svc-") and (
            key.user.password or "!"
        ).startswith("!")
        if not service_account:
            ServiceKey.objects.filter(pk=key.pk).update(user_bound=True)


class Migration(migrations.Migration):
    dependencies = [("podi", "0003_unique_user_email")]

    operations = [
        migrations.AddField(
            model_name="servicekey",
            name="user_bound",
            field=models.BooleanField(
                default=False,
                help_text="Created for a real user (--user): the key acts only for that user. "
                "Off: the key has its own service account (svc-<name>) and acts for any user in "
                "the areas of its scopes (README, 'Who may see what').",
            ),
        ),
        migrations.RunPython(classify, migrations.RunPython.noop),
    ]
