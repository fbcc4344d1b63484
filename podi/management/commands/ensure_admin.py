"""``manage.py ensure_admin``: create the first admin user from PODI_ADMIN_* if there is no staff user.

Run it once per deployment (the ``podi-setup`` oneshot unit in deploy/ does, after ``migrate``).
Without PODI_ADMIN_PASSWORD a password is generated and printed once.
"""

from django.conf import settings
from django.core.management.base import BaseCommand

from podi.services import admin_user_ensure


def ensure_first_admin(stdout) -> bool:
    """Create the first admin (see module doc) and say so on ``stdout``; True when created."""
    username = settings.PODI_ADMIN_USERNAME
    created = admin_user_ensure(username=username, password=settings.PODI_ADMIN_PASSWORD)
    if created is None:
        return False
    _, generated = created
    if generated:
        stdout.write(
            f"Created the first admin user {username!r} with password: {generated}\n"
            "  (shown once; set PODI_ADMIN_PASSWORD to choose it)\n"
        )
    else:
        stdout.write(
            f"Created the first admin user {username!r} (password from PODI_ADMIN_PASSWORD)\n"
        )
    stdout.flush()
    return True


class Command(BaseCommand):
    help = (
        "Create the first admin user from PODI_ADMIN_USERNAME/PODI_ADMIN_PASSWORD if none exists."
    )

    def handle(self, *args, **options):
        if not ensure_first_admin(self.stdout):
            self.stdout.write("A staff user exists already; nothing to do.\n")
