from django.apps import AppConfig


class WalletConfig(AppConfig):
    name = "wallet"
    verbose_name = "Wallet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from podi.services import register_user_setup
        from wallet.services import account_open

        # A new user (registered over the API or created in the console) has an account at once.
        register_user_setup(account_open)
