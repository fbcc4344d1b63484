from django.urls import path

from wallet import apis

urlpatterns = [
    path("grant", apis.WalletGrantApi.as_view(), name="wallet-grant"),
    path("freeze", apis.HoldFreezeApi.as_view(), name="wallet-freeze"),
    path("confirm", apis.HoldConfirmApi.as_view(), name="wallet-confirm"),
    path("release", apis.HoldReleaseApi.as_view(), name="wallet-release"),
    path("balance", apis.WalletBalanceApi.as_view(), name="wallet-balance"),
    path("transactions", apis.WalletTransactionsApi.as_view(), name="wallet-transactions"),
    path("statistics", apis.WalletStatisticsApi.as_view(), name="wallet-statistics"),
]
