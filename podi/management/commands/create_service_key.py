from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from podi.errors import AppError
from podi.models import SCOPES
from podi.services import service_key_create


class Command(BaseCommand):
    help = "Create a service key (psk_…) and print it once. Only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes", default="", help=f"Comma-separated, from: {', '.join(SCOPES)}"
        )
        parser.add_argument(
            "--user",
            help="The user the key acts for, and only for (default: a new service account "
            "svc-<name> that acts for any user in the areas of its scopes).",
        )

    def handle(self, *args, name, scopes, user, **options):
        owner = None
        if user:
            owner = get_user_model().objects.filter(username=user).first()
            if owner is None:
                raise CommandError(f"No user named {user!r}")
        try:
            key, raw = service_key_create(name=name, scopes=scopes.split(","), user=owner)
        except AppError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(
            f"Created service key {key.name!r} (id {key.pk}, scopes: {', '.join(key.scopes) or 'none'}) "
            f"acting as {key.user.username!r}. Store it now; it is not shown again:\n"
        )
        self.stdout.write(raw + "\n")
