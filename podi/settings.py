"""PODI settings: everything comes from the environment through ``podi.env.Env``.

With nothing set PODI runs embedded: SQLite, local file storage, an in-memory channel layer and
an in-process Dramatiq worker, all under ``PODI_DATA_DIR``. ``.env.example`` lists every variable.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from podi.env import Env

env = Env()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env.str("PODI_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _generated_secret(name: str) -> str:
    """A random secret kept in ``DATA_DIR/<name>`` (mode 0600), made on first start."""
    path = DATA_DIR / name
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


def _secret_key() -> str:
    value = env.str("SECRET_KEY")
    if value:
        if len(value) < 32:
            raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters")
        return value
    return _generated_secret("secret_key")


SECRET_KEY = _secret_key()
DEBUG = env.bool("DEBUG", False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])
# Where `manage.py up` / `make run` listen; PUBLIC_BASE_URL follows them unless it is set.
HOST = env.str("HOST", "127.0.0.1")
PORT = env.int("PORT", 8000, min_value=1, max_value=65535)


def base_url_for(host: str, port: int) -> str:
    """The URL clients use for a server bound to ``host:port`` (wildcards become loopback)."""
    wildcards = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
    host = wildcards.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


PUBLIC_BASE_URL_IS_SET = bool(env.str("PUBLIC_BASE_URL"))
PUBLIC_BASE_URL = env.url("PUBLIC_BASE_URL", ("http", "https"), base_url_for(HOST, PORT)).rstrip(
    "/"
)

INSTALLED_APPS = [
    "daphne",
    "podi.console.apps.ConsoleAdminConfig",  # django.contrib.admin with the console's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_dramatiq",
    "podi",
    "podi.realtime",
    "wallet",
    "integrations",
    "integrations.agents",
    "media_app",
    "tasks",
    "podi.console",
]

MIDDLEWARE = [
    "podi.middleware.RequestIdMiddleware",
    "podi.metrics.MetricsMiddleware",
    "podi.middleware.RejectNulMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Benches only (bench/peer.py): count SQL statements per process into this directory
# (podi/sqlcount.py). Off unless set.
SQL_COUNT_DIR = env.str("PODI_SQL_COUNT_DIR", "")
if SQL_COUNT_DIR:
    MIDDLEWARE.insert(0, "podi.sqlcount.SqlCountMiddleware")

ROOT_URLCONF = "podi.urls"
# /api/abilities is mounted without a trailing slash, so its sub-routes start with "/".
SILENCED_SYSTEM_CHECKS = ["urls.W002"]
ASGI_APPLICATION = "podi.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Processes ------------------------------------------------------------------------------
REDIS_URL = env.url("REDIS_URL", ("redis", "rediss", "unix"))
# Web (Daphne) processes `manage.py up` runs on one listening socket. Several need Redis: the
# in-memory channel layer and the in-process stub broker do not cross processes.
WEB_CONCURRENCY = env.int(
    "WEB_CONCURRENCY", (os.cpu_count() or 1) if REDIS_URL else 1, min_value=1, max_value=64
)
# Threads per web process that run requests (docs/adr/0027-request-threads.md): each request's
# synchronous part (signals, middleware, view) runs on one of them in one hop. Requests past
# the database pool wait there for a connection and answer 503 DATABASE_BUSY after
# DATABASE_POOL_TIMEOUT; requests past WEB_THREADS queue for a thread.
WEB_THREADS = env.int("WEB_THREADS", 64, min_value=1, max_value=1024)
if WEB_CONCURRENCY > 1 and not REDIS_URL:
    raise ImproperlyConfigured(
        "WEB_CONCURRENCY > 1 needs REDIS_URL: the embedded channel layer and broker live in one "
        "process"
    )

# --- Database -------------------------------------------------------------------------------
_database = env.database("DATABASE_URL")
_postgres = _database if _database and _database["ENGINE"].endswith("postgresql") else None
# A bounded psycopg pool per process on PostgreSQL. All PODI processes together open at most
# DATABASE_MAX_CONNECTIONS × DATABASE_POOL_SHARE % connections: each process gets that budget
# divided by DATABASE_POOL_PROCESSES (default: what `manage.py up` runs on this host, the web
# processes + the worker + the reconciler), or DATABASE_POOL_MAX if set. See .env.example.
DATABASE_POOL = env.bool("DATABASE_POOL", True) and bool(_postgres)
DATABASE_MAX_CONNECTIONS = env.int("DATABASE_MAX_CONNECTIONS", 100, min_value=2)
DATABASE_POOL_SHARE = env.int("DATABASE_POOL_SHARE", 80, min_value=1, max_value=100)
DATABASE_POOL_PROCESSES = env.int("DATABASE_POOL_PROCESSES", WEB_CONCURRENCY + 2, min_value=1)
DATABASE_POOL_MAX = env.int(
    "DATABASE_POOL_MAX",
    max(
        2,
        DATABASE_MAX_CONNECTIONS * DATABASE_POOL_SHARE // 100 // DATABASE_POOL_PROCESSES,
    ),
    min_value=1,
)
DATABASE_POOL_MIN = env.int("DATABASE_POOL_MIN", min(2, DATABASE_POOL_MAX), min_value=0)
if DATABASE_POOL_MIN > DATABASE_POOL_MAX:
    raise ImproperlyConfigured("DATABASE_POOL_MIN must not exceed DATABASE_POOL_MAX")
# Seconds a request or actor waits for a pooled connection before giving up (HTTP 503).
DATABASE_POOL_TIMEOUT = env.int("DATABASE_POOL_TIMEOUT", 5, min_value=1, max_value=300)
# Prepared statements (docs/adr/0025-prepared-statements.md): parameters bound by PostgreSQL, and a
# statement run DATABASE_PREPARE_THRESHOLD times on one connection is prepared there, so its
# parse and plan are not paid again. Off (false) for a pooler that cannot keep prepared
# statements (PgBouncer in transaction mode before 1.21): Django's client-side binding.
DATABASE_PREPARED_STATEMENTS = env.bool("DATABASE_PREPARED_STATEMENTS", True)
DATABASE_PREPARE_THRESHOLD = env.int("DATABASE_PREPARE_THRESHOLD", 5, min_value=1, max_value=1000)
if _postgres:
    _postgres["CONN_HEALTH_CHECKS"] = True
    _postgres["OPTIONS"].setdefault("connect_timeout", "5")
    if DATABASE_PREPARED_STATEMENTS:
        _postgres["OPTIONS"]["server_side_binding"] = True
        _postgres["OPTIONS"]["prepare_threshold"] = DATABASE_PREPARE_THRESHOLD
    if DATABASE_POOL:
        # Django hands connections back to the pool at the end of each request or message.
        _postgres["CONN_MAX_AGE"] = 0
        # Django's backend with a pool that hands out its warmest connection (ADR 0035).
        _postgres["ENGINE"] = "podi.db"
        _postgres["OPTIONS"]["pool"] = {
            "min_size": DATABASE_POOL_MIN,
            "max_size": DATABASE_POOL_MAX,
            "timeout": DATABASE_POOL_TIMEOUT,
            "name": "podi",
        }
    else:
        _postgres["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", 0, min_value=0)
    DATABASES = {"default": _postgres}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _database["NAME"] if _database else DATA_DIR / "podi.sqlite3",
            "OPTIONS": {
                # WAL + a busy timeout + IMMEDIATE transactions: web and worker threads queue
                # for the write lock instead of failing with "database is locked".
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
IS_POSTGRES = bool(_postgres)

# --- Redis, channel layer, cache, broker ----------------------------------------------------
BROKER_URL = env.url("BROKER_URL", ("redis", "rediss", "amqp", "amqps"), REDIS_URL)
REDIS_PREFIX = env.str("REDIS_PREFIX", "podi")

# With Redis: channels_redis's pub/sub layer (one PUBLISH per message, pushed to every web
# process's subscription) by default; CHANNEL_LAYER=core for the list-based layer
# (docs/adr/0014-platform-plumbing.md).
CHANNEL_LAYER = env.choice("CHANNEL_LAYER", ("pubsub", "core"), "pubsub")
if REDIS_URL and CHANNEL_LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_PREFIX}:asgi"},
        }
    }
elif REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_PREFIX}:asgi", "capacity": 1000},
        }
    }
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "podi.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"{REDIS_PREFIX}:cache",
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

_dramatiq_middleware = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    # Before Retries: after_* hooks run in reverse order, so it sees what Retries gave up on.
    "podi.runtime.DatabaseBusyRetry",
    "dramatiq.middleware.Retries",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
    "podi.runtime.WorkerLiveness",
]
if BROKER_URL and BROKER_URL.startswith("amqp"):
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.rabbitmq.RabbitmqBroker",
        "OPTIONS": {"url": BROKER_URL},
        "MIDDLEWARE": _dramatiq_middleware,
    }
elif BROKER_URL:
    # Dramatiq's Redis broker, plus a pub/sub doorbell that wakes an idle worker at once
    # (docs/adr/0014-platform-plumbing.md).
    DRAMATIQ_BROKER = {
        "BROKER": "podi.broker.DoorbellRedisBroker",
        "OPTIONS": {"url": BROKER_URL, "namespace": f"{REDIS_PREFIX}:dramatiq"},
        "MIDDLEWARE": _dramatiq_middleware,
    }
else:
    # Embedded: messages live in this process; `manage.py up` runs the worker in-process and
    # the reconciler re-enqueues anything the database says is still waiting after a restart.
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.stub.StubBroker",
        "OPTIONS": {},
        "MIDDLEWARE": _dramatiq_middleware,
    }
DRAMATIQ_TASKS_DATABASE = "default"
DRAMATIQ_AUTODISCOVER_MODULES = ["actors"]
WORKER_THREADS = env.int("WORKER_THREADS", 8, min_value=1, max_value=256)
# Threads per worker process that conclude followed ComfyUI prompts (read history, store outputs,
# finish the task; ADR 0015). Each may hold a database connection while it works.
FINISHER_THREADS = env.int("FINISHER_THREADS", 4, min_value=1, max_value=64)
RECONCILE_INTERVAL = env.int("RECONCILE_INTERVAL", 5, min_value=1, max_value=3600)
# The reconciler lease: renewed every third of this while a pass runs; a reconciler killed
# mid-pass keeps the others waiting at most this long (docs/adr/0012-fleet.md).
RECONCILE_LEASE_TTL = env.int("RECONCILE_LEASE_TTL", 15, min_value=3, max_value=3600)
# Log each reconciler pass's start and end (holder, times) at INFO instead of DEBUG.
RECONCILE_LOG_PASSES = env.bool("RECONCILE_LOG_PASSES", False)
# A worker process renews a liveness lease every third of this; once it has been silent this
# long the reconciler hands the tasks it was running to another worker (docs/adr/0012-fleet.md).
WORKER_LEASE_TTL = env.int("WORKER_LEASE_TTL", 15, min_value=3, max_value=3600)
# Behind a reverse proxy: take the client address and scheme from X-Forwarded-For/-Proto.
PROXY_HEADERS = env.bool("PROXY_HEADERS", False)

# --- Auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
ALLOW_REGISTRATION = env.bool("ALLOW_REGISTRATION", False)
JWT_ACCESS_TTL = env.int("JWT_ACCESS_TTL", 900, min_value=30, max_value=86400)
JWT_REFRESH_TTL = env.int("JWT_REFRESH_TTL", 7 * 86400, min_value=60)
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=JWT_ACCESS_TTL),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=JWT_REFRESH_TTL),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "ALGORITHM": "HS256",
    "SIGNING_KEY": env.str("JWT_SIGNING_KEY") or SECRET_KEY,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
}
PODI_ADMIN_USERNAME = env.str("PODI_ADMIN_USERNAME", "admin")
PODI_ADMIN_PASSWORD = env.str("PODI_ADMIN_PASSWORD")

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["podi.auth.BearerAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "podi.auth.ScopePermission",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "podi.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "podi.pagination.PagePagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "podi.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "podi.schema.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["podi.throttling.PrincipalRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "principal": env.rate("RATE_LIMIT", "1200/min"),
        "anon": env.rate("RATE_LIMIT_ANON", "60/min"),
        "login": env.rate("RATE_LIMIT_LOGIN", "20/min"),
        "login_name": env.rate("RATE_LIMIT_LOGIN_NAME", "10/min"),
    },
    # How many proxies in front of PODI append to X-Forwarded-For (0: use the peer address).
    "NUM_PROXIES": env.int("TRUSTED_PROXIES", 0, min_value=0, max_value=10),
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DATETIME_FORMAT": "iso-8601",
    "COERCE_DECIMAL_TO_STRING": False,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "PODI API",
    "DESCRIPTION": "The open AI-generation middle platform: auth, wallet, media, tasks, abilities, admin.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "ENUM_NAME_OVERRIDES": {
        "AbilityStatusEnum": "integrations.models.Ability.Status",
        "VendorApiKeyStatusEnum": "integrations.models.VendorApiKey.Status",
        "ExecutorHealthStatusEnum": "integrations.models.HealthStatus",
        "AgentStatusEnum": "integrations.agents.models.Agent.Status",
        "AgentTaskStatusEnum": "integrations.agents.models.AgentTask.Status",
    },
}
IDEMPOTENCY_TTL = env.int("IDEMPOTENCY_TTL", 86400, min_value=60)

CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", [])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_EXPOSE_HEADERS = ["X-Request-ID", "Retry-After"]
CORS_ALLOW_HEADERS = [
    "accept",
    "authorization",
    "content-type",
    "idempotency-key",
    "x-request-id",
]

# --- Storage --------------------------------------------------------------------------------
STORAGE_BACKEND = env.choice("STORAGE_BACKEND", ("local", "oss", "s3"), "local")
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", str(DATA_DIR / "media"))).resolve()
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
SERVE_STATIC = env.bool("SERVE_STATIC", True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
MEDIA_MAX_UPLOAD_BYTES = env.int("MEDIA_MAX_UPLOAD_BYTES", 50 * 1024 * 1024, min_value=1)
MEDIA_ALLOWED_TYPES = env.list(
    "MEDIA_ALLOWED_TYPES",
    ["image/png", "image/jpeg", "image/webp", "image/gif", "video/mp4", "audio/mpeg", "audio/wav"],
)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# objectKey = <prefix>/<userId>/<YYYYMMDD>/<random>.<ext>; seed 000 called it OSS_ROOT_PREFIX.
MEDIA_UPLOAD_PREFIX = env.str("MEDIA_UPLOAD_PREFIX") or env.str("OSS_ROOT_PREFIX", "uploads")
if not re.fullmatch(
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}(/[A-Za-z0-9][A-Za-z0-9._-]{0,62}){0,3}", MEDIA_UPLOAD_PREFIX
):
    raise ImproperlyConfigured(
        "MEDIA_UPLOAD_PREFIX (OSS_ROOT_PREFIX) must be 1-4 path segments of letters, digits, . _ -"
    )
if MEDIA_UPLOAD_PREFIX.split("/")[0] in ("results", "files"):
    raise ImproperlyConfigured("MEDIA_UPLOAD_PREFIX must not start with results/ or files/")
# Seconds a browser upload grant (signed PUT, presigned POST, PostObject policy) stays valid.
MEDIA_UPLOAD_URL_TTL = env.int("MEDIA_UPLOAD_URL_TTL", 900, min_value=60, max_value=3600)
# User upload keys (POST upload-key): HMAC secret (derived from SECRET_KEY when empty) and TTL.
UPLOAD_TOKEN_SECRET = env.str("UPLOAD_TOKEN_SECRET") or ""
if UPLOAD_TOKEN_SECRET and len(UPLOAD_TOKEN_SECRET) < 32:
    raise ImproperlyConfigured("UPLOAD_TOKEN_SECRET must be at least 32 characters")
UPLOAD_TOKEN_TTL = env.int("UPLOAD_TOKEN_TTL", 3600, min_value=60, max_value=7 * 86400)

# Aliyun OSS (STORAGE_BACKEND=oss). Seed 000's names and aliases keep working.
OSS_ACCESS_KEY = env.str("OSS_ACCESS_KEY") or env.str("OSS_AK")
OSS_SECRET_KEY = env.str("OSS_SECRET_KEY") or env.str("OSS_SK")
OSS_ENDPOINT = env.str("OSS_ENDPOINT")  # oss-cn-hangzhou.aliyuncs.com (https:// assumed)
OSS_REGION = env.str("OSS_REGION")  # cn-hangzhou (seed form oss-cn-hangzhou accepted)
OSS_BUCKET = env.str("OSS_BUCKET")
OSS_PUBLIC_DOMAIN = env.str("OSS_PUBLIC_DOMAIN") or env.str("OSS_DOWNLOAD_DOMAIN")
OSS_ROLE_ARN = env.str("OSS_ROLE_ARN")
OSS_STS_DURATION = env.int("OSS_STS_DURATION", 900, min_value=900, max_value=3600)
OSS_STS_ENDPOINT = env.str("OSS_STS_ENDPOINT", "sts.aliyuncs.com")
OSS_CALLBACK_URL_IS_SET = bool(env.str("OSS_CALLBACK_URL"))
OSS_CALLBACK_URL = env.url(
    "OSS_CALLBACK_URL", ("http", "https"), f"{PUBLIC_BASE_URL}/api/media/v1/oss-callback"
)
# Hosts the callback's x-oss-pub-key-url may point at (host or host:port).
OSS_CALLBACK_PUBKEY_HOSTS = env.list("OSS_CALLBACK_PUBKEY_HOSTS", ["gosspublic.alicdn.com"])
OSS_TIMEOUT = env.int("OSS_TIMEOUT", 10, min_value=1, max_value=120)

# S3 and S3-compatible stores (STORAGE_BACKEND=s3) through django-storages; AWS_* names work too.
S3_BUCKET = env.str("S3_BUCKET") or env.str("AWS_STORAGE_BUCKET_NAME")
S3_ACCESS_KEY_ID = env.str("S3_ACCESS_KEY_ID") or env.str("AWS_ACCESS_KEY_ID")
S3_SECRET_ACCESS_KEY = env.str("S3_SECRET_ACCESS_KEY") or env.str("AWS_SECRET_ACCESS_KEY")
S3_ENDPOINT_URL = env.url("S3_ENDPOINT_URL", ("http", "https")) or env.url(
    "AWS_S3_ENDPOINT_URL", ("http", "https")
)
S3_REGION = env.str("S3_REGION") or env.str("AWS_S3_REGION_NAME", "us-east-1")
S3_ADDRESSING_STYLE = env.choice(
    "S3_ADDRESSING_STYLE", ("auto", "path", "virtual"), "path" if S3_ENDPOINT_URL else "auto"
)

_storage_missing = {
    "oss": [
        name
        for name, value in (
            ("OSS_ACCESS_KEY (or OSS_AK)", OSS_ACCESS_KEY),
            ("OSS_SECRET_KEY (or OSS_SK)", OSS_SECRET_KEY),
            ("OSS_ENDPOINT", OSS_ENDPOINT),
            ("OSS_REGION", OSS_REGION),
            ("OSS_BUCKET", OSS_BUCKET),
        )
        if not value
    ],
    "s3": [
        name
        for name, value in (
            ("S3_BUCKET", S3_BUCKET),
            ("S3_ACCESS_KEY_ID", S3_ACCESS_KEY_ID),
            ("S3_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY),
        )
        if not value
    ],
}.get(STORAGE_BACKEND)
if _storage_missing:
    raise ImproperlyConfigured(
        f"STORAGE_BACKEND={STORAGE_BACKEND} needs {', '.join(_storage_missing)}"
    )
if STORAGE_BACKEND == "oss":
    STORAGES["default"] = {"BACKEND": "media_app.storage.oss.OssStorage"}
elif STORAGE_BACKEND == "s3":
    STORAGES["default"] = {"BACKEND": "media_app.storage.s3.PodiS3Storage"}
else:
    STORAGES["default"]["OPTIONS"] = {"allow_overwrite": True}
# Browsers also PUT to / GET from the local backend's signed URLs from the app's origin.
CORS_URLS_REGEX = rf"(?:{CORS_URLS_REGEX})|^/media-(?:upload|download)/"

# --- Wallet ---------------------------------------------------------------------------------
WALLET_HOLD_TTL = env.int("WALLET_HOLD_TTL", 3600, min_value=10)
# Seconds a task's hold outlives the task's current deadline (queue or run); it is moved later
# whenever a deadline moves. Keep it well above the run-timeout grace (30 s) plus
# RECONCILE_INTERVAL: a confirm after the hold expired fails the task (docs/adr/0011).
TASK_HOLD_MARGIN = env.int("TASK_HOLD_MARGIN", 900, min_value=1)

# --- Tasks ----------------------------------------------------------------------------------
# Users and non-admin service keys may set a task priority within ±this; staff and admin-scope
# keys the full -100…100.
# Seconds a process keeps the catalog (abilities, bindings) it read; changes made in the same
# process clear it at once (ADR 0018). 0 reads it every time.
CATALOG_CACHE_SECONDS = env.int("CATALOG_CACHE_SECONDS", 2, min_value=0)
# A task that finds a free slot and nobody waiting starts in its submit (ADR 0018).
TASK_START_AT_SUBMIT = env.bool("TASK_START_AT_SUBMIT", True)
TASK_USER_PRIORITY_MAX = env.int("TASK_USER_PRIORITY_MAX", 10, min_value=0, max_value=100)

# --- Webhooks -------------------------------------------------------------------------------
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", False)
WEBHOOK_SECRET = env.str("WEBHOOK_SECRET")
WEBHOOK_RETRY_SCHEDULE = env.int_list(
    "WEBHOOK_RETRY_SCHEDULE", [5, 300, 1800, 7200, 18000, 36000, 36000]
)
WEBHOOK_TIMEOUT = env.int("WEBHOOK_TIMEOUT", 10, min_value=1, max_value=120)
# Seconds between heartbeats on /api/notify/v1/stream (docs/adr/0006-live-events.md).
NOTIFY_HEARTBEAT_INTERVAL = env.int("NOTIFY_HEARTBEAT_INTERVAL", 25, min_value=1, max_value=3600)

# --- Integrations ---------------------------------------------------------------------------
# Key for vendor secrets at rest (Fernet); derived from SECRET_KEY when not set.
SECRETS_ENCRYPTION_KEY = env.str("SECRETS_ENCRYPTION_KEY")
EXECUTOR_HTTP_TIMEOUT = env.int("EXECUTOR_HTTP_TIMEOUT", 30, min_value=1, max_value=600)
# Seconds between automatic health checks of each enabled executor (reconciler).
EXECUTOR_HEALTH_INTERVAL = env.int("EXECUTOR_HEALTH_INTERVAL", 60, min_value=5, max_value=86400)

# --- Agents ---------------------------------------------------------------------------------


def _agent_jwt_secrets(raw: str | None) -> dict[str, str]:
    """``kid1:secret1,kid2:secret2`` → ``{kid: secret}`` in order: the first kid signs new agent
    tokens, every listed kid verifies (rotation: add a new kid first, remove the old one later).
    A malformed value stops start-up; messages never echo a secret."""
    name, secrets_by_kid = "AGENT_JWT_SECRETS", {}
    for index, item in enumerate((raw or "").split(",") if raw else [], start=1):
        kid, sep, secret = item.strip().partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", kid):
            raise ImproperlyConfigured(
                f"{name} must look like kid1:secret1,kid2:secret2 (item {index}: a kid of "
                "letters, digits, '.', '_' or '-', then ':' and the secret)"
            )
        if len(secret.strip()) < 32:
            raise ImproperlyConfigured(f"{name}: the secret of kid {kid!r} needs >= 32 characters")
        if kid in secrets_by_kid:
            raise ImproperlyConfigured(f"{name} lists kid {kid!r} twice")
        secrets_by_kid[kid] = secret.strip()
    return secrets_by_kid


# Unset: one generated secret under the kid "local", kept in the data dir like SECRET_KEY, so agent
# tokens work out of the box (set the variable to rotate, or when several hosts verify tokens).
AGENT_JWT_SECRETS = _agent_jwt_secrets(env.str("AGENT_JWT_SECRETS")) or {
    "local": _generated_secret("agent_jwt_secret")
}
AGENT_HEARTBEAT_TOKEN_TTL = env.int("AGENT_HEARTBEAT_TOKEN_TTL", 30 * 86400, min_value=60)
AGENT_TASK_TOKEN_TTL = env.int("AGENT_TASK_TOKEN_TTL", 3600, min_value=60)
AGENT_HEARTBEAT_INTERVAL = env.int("AGENT_HEARTBEAT_INTERVAL", 30, min_value=1)

# --- Metrics (/metrics, Prometheus) ---------------------------------------------------------
# Bearer token for /metrics; unset = loopback clients only.
METRICS_TOKEN = env.str("METRICS_TOKEN")
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters")
# Several processes (web + separate workers) on one host: a directory they all write their
# histogram samples to, emptied before they start. prometheus_client reads it from os.environ.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR

# --- Internationalisation, logging ----------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOG_LEVEL = env.choice("LOG_LEVEL", ("debug", "info", "warning", "error"), "info").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "podi.logging.RequestIdFilter"}},
    "formatters": {"json": {"()": "podi.logging.JsonFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "twisted": {"level": "WARNING"},
        "dramatiq": {"level": "WARNING"},
        "django_dramatiq": {"level": "WARNING"},
        "pika": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
    SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", False)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
