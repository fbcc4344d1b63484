from django.urls import path

from media_app import apis

urlpatterns = [
    path("upload-key", apis.UploadKeyApi.as_view(), name="media-upload-key"),
    path("upload-key/revoke", apis.UploadKeyRevokeApi.as_view(), name="media-upload-key-revoke"),
    path("sts", apis.StsApi.as_view(), name="media-sts"),
    path("oss-callback", apis.OssCallbackApi.as_view(), name="media-oss-callback"),
    path("complete", apis.CompleteApi.as_view(), name="media-complete"),
    path("signed-download", apis.SignedDownloadApi.as_view(), name="media-signed-download"),
    path("files", apis.FilesApi.as_view(), name="media-files"),
    path("files/<path:path>", apis.FileDetailApi.as_view(), name="media-file"),
]

# Mounted at the site root: the local backend's signed upload and download URLs.
root_urlpatterns = [
    path("media-upload/<str:token>", apis.local_upload, name="media-local-upload"),
    path("media-download/<str:token>", apis.local_download, name="media-local-download"),
]
