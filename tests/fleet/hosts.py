"""A PODI fleet on this machine: one network namespace per host, joined by a bridge.

Hosts (``ip netns`` each, a veth pair to the fleet's own bridge, addresses 10.77.<n>.0/24 that exist
only on that bridge and inside these namespaces; ip_forward stays off and no namespace has a
default route, so nothing leaves the machine):

======== =========== ===================================================================
name     address     runs
======== =========== ===================================================================
(bridge) .1          this test process (load, WebSocket clients, probes)
db       .10         a private PostgreSQL (initdb into a temp dir, own cluster)
redis    .11         a private Redis
web1/2   .21/.22     ``manage.py up --role web``
worker1/2 .31/.32    ``manage.py up --role worker``
recon/2  .40/.41     ``manage.py up --role reconciler`` (two, sharing one lease)
lb       .50         nginx with deploy/nginx/podi.conf rendered with test values (TLS on 443)
exec1/2  .61/.62     the protocol-faithful ComfyUI test server (tests/servers/comfyui.py)
hook     .70         a webhook receiver that logs every delivery
======== =========== ===================================================================

Every process runs in its own session (process group); ``Fleet.close()`` kills every group it
started, deletes the namespaces and the bridge and removes the temp dir, also after a failure.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DEPLOY = ROOT / "deploy"
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
PASSWORD = "fleet-" + secrets.token_urlsafe(12)


class FleetUnavailable(RuntimeError):
    """This machine cannot build the fleet (no network namespaces, no nginx, …)."""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def preflight() -> None:
    """Raise ``FleetUnavailable`` with one clear line when the fleet cannot be built here."""
    if os.geteuid() != 0:
        raise FleetUnavailable("the fleet test needs root (ip netns, veth, bridge)")
    for tool in ("ip", "nginx", "redis-server", "setpriv"):
        if shutil.which(tool) is None:
            raise FleetUnavailable(f"the fleet test needs {tool!r} on PATH")
    if not PG_BIN:
        raise FleetUnavailable("the fleet test needs PostgreSQL server binaries")
    probe = f"pfprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        raise FleetUnavailable(
            f"network namespaces are not permitted here: ip netns add: {made.stderr.strip()}"
        )
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Host:
    name: str
    ip: str
    netns: str
    veth: str  # the bridge-side end (in the root namespace)
    procs: list[Proc] = field(default_factory=list)


class Fleet:
    HOSTS = {
        "db": 10,
        "redis": 11,
        "web1": 21,
        "web2": 22,
        "worker1": 31,
        "worker2": 32,
        "recon": 40,
        "recon2": 41,
        "lb": 50,
        "exec1": 61,
        "exec2": 62,
        "hook": 70,
    }

    def __init__(self) -> None:
        self.tag = f"pf{os.getpid() % 100000}"
        self.net = self._free_subnet()
        self.dir = Path(tempfile.mkdtemp(prefix="podi-fleet-"))
        os.chmod(self.dir, 0o755)  # noqa: S103 - postgres and nginx read below it
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.data = self.dir / "data"
        self.data.mkdir()
        self.bridge = f"{self.tag}br"
        self.hosts: dict[str, Host] = {}
        self.env: dict[str, str] = {}
        self.lb_url = ""
        self.hook_log = self.dir / "webhooks.jsonl"

    # --- network ---------------------------------------------------------------------------

    @staticmethod
    def _free_subnet() -> int:
        routes = sh("ip", "-4", "route", "show", "table", "all").stdout
        for n in range(77, 250):
            if f"10.77.{n}." not in routes:
                return n
        raise FleetUnavailable("no free 10.77.N.0/24 subnet for the fleet bridge")

    def ip(self, host: str) -> str:
        return f"10.77.{self.net}.{self.HOSTS[host]}"

    def build_network(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"10.77.{self.net}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for index, (name, octet) in enumerate(self.HOSTS.items()):
            netns = f"{self.tag}-{name}"
            veth = f"{self.tag}v{index}"
            sh("ip", "netns", "add", netns)
            self.hosts[name] = Host(name, self.ip(name), netns, veth)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            sh("ip", "link", "set", f"{veth}p", "netns", netns)
            sh("ip", "link", "set", veth, "master", self.bridge)
            sh("ip", "link", "set", veth, "up")
            inside = ("ip", "netns", "exec", netns, "ip")
            sh(*inside, "link", "set", "lo", "up")
            sh(*inside, "link", "set", f"{veth}p", "name", "eth0")
            sh(*inside, "addr", "add", f"10.77.{self.net}.{octet}/24", "dev", "eth0")
            sh(*inside, "link", "set", "eth0", "up")

    def link(self, host: str, up: bool) -> None:
        """Cut (or restore) a host's only link, like pulling its cable."""
        sh("ip", "link", "set", self.hosts[host].veth, "up" if up else "down")

    # --- processes -------------------------------------------------------------------------

    def spawn(self, host: str, name: str, command: list[str], env: dict | None = None) -> Proc:
        where = self.hosts[host]
        log = self.logs / f"{name}.log"
        handle = open(log, "ab")  # noqa: SIM115 - owned by the child, closed by us on stop
        popen = subprocess.Popen(
            ["ip", "netns", "exec", where.netns, *command],
            cwd=ROOT,
            env=env or self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        proc = Proc(name, popen, log)
        where.procs.append(proc)
        return proc

    def kill(self, host: str, sig: int = signal.SIGKILL, timeout: float = 20) -> None:
        """Send ``sig`` to every process group started on ``host`` and wait for them to end."""
        where = self.hosts[host]
        for proc in where.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, sig)
        for proc in where.procs:
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)  # leftovers of the group
        where.procs.clear()

    def wait_for(self, proc: Proc, ready, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{proc.name}: {what} not within {timeout} s:\n{proc.tail()}")

    # --- services ----------------------------------------------------------------------------

    def start_postgres(self, *, fresh: bool = True) -> Proc:
        pgdata = self.dir / "pg"
        sockets = self.dir / "pgsock"
        if fresh:
            for path in (pgdata, sockets):
                path.mkdir()
                shutil.chown(path, "postgres", "postgres")
            subprocess.run(
                ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                 str(PG_BIN[-1] / "initdb"), "-D", str(pgdata), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--no-sync"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            with open(pgdata / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all 10.77.{self.net}.0/24 trust\n")
        proc = self.spawn(
            "db",
            "postgres",
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
             str(PG_BIN[-1] / "postgres"), "-D", str(pgdata), "-h", self.ip("db"), "-p", "5432",
             "-k", str(sockets), "-c", "max_connections=300", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"},
        )  # fmt: skip
        self.wait_for(proc, lambda: self._pg_ready(), "PostgreSQL accepting connections", 60)
        return proc

    def _pg_ready(self) -> bool:
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@{self.ip('db')}:5432/postgres", connect_timeout=2
        ):
            return True

    def start_redis(self) -> Proc:
        proc = self.spawn(
            "redis",
            "redis",
            ["redis-server", "--bind", self.ip("redis"), "--port", "6379", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no"],
            env={"PATH": os.environ["PATH"]},
        )  # fmt: skip
        import redis

        client = redis.Redis(host=self.ip("redis"), port=6379, socket_timeout=2)
        self.wait_for(proc, client.ping, "Redis answering PING", 30)
        return proc

    def podi_env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "HOME")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update(
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="podi.settings",
            SECRET_KEY="fleet-" + secrets.token_urlsafe(40),
            DATABASE_URL=f"postgres://postgres@{self.ip('db')}:5432/podi",
            REDIS_URL=f"redis://{self.ip('redis')}:6379/0",
            REDIS_PREFIX="fleet",
            PODI_DATA_DIR=str(self.data),
            PUBLIC_BASE_URL=f"https://{self.ip('lb')}",
            ALLOWED_HOSTS="*",
            PROXY_HEADERS="true",
            PODI_ADMIN_USERNAME="fleet-admin",
            PODI_ADMIN_PASSWORD=PASSWORD,
            WEBHOOK_ALLOW_PRIVATE="true",
            WEBHOOK_SECRET="whsec_" + "ZmxlZXQtd2ViaG9vay1zZWNyZXQtMzItYnl0ZXMhIQ==",
            RECONCILE_INTERVAL="1",
            EXECUTOR_HEALTH_INTERVAL="5",
            WORKER_LEASE_TTL="6",
            WORKER_THREADS="12",
            LOG_LEVEL="warning",
            DATABASE_CONN_MAX_AGE="0",
        )
        return env

    def setup_database(self) -> None:
        """What deploy/systemd/podi-setup.service does, on web1."""
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@{self.ip('db')}:5432/postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE podi")
        for step in (["migrate", "--noinput"], ["collectstatic", "--noinput"], ["ensure_admin"]):
            proc = self.spawn("web1", f"setup-{step[0]}", [PYTHON, "manage.py", *step])
            if proc.popen.wait(timeout=300) != 0:
                raise RuntimeError(f"manage.py {step[0]} failed:\n{proc.tail()}")
            self.hosts["web1"].procs.remove(proc)

    def start_web(self, host: str) -> Proc:
        proc = self.spawn(
            host,
            host,
            [PYTHON, "manage.py", "up", "--role", "web", "--host", "0.0.0.0", "--port", "8000"],
        )
        url = f"http://{self.ip(host)}:8000/health"
        self.wait_for(proc, lambda: httpx.get(url, timeout=3).status_code == 200, "/health")
        return proc

    def start_worker(self, host: str) -> Proc:
        proc = self.spawn(host, host, [PYTHON, "manage.py", "up", "--role", "worker"])
        self.wait_for(proc, lambda: "PODI worker is up" in proc.tail(), "worker up")
        return proc

    def start_reconciler(self, host: str = "recon") -> Proc:
        # INFO: each pass logs its start and end with its holder (reconcile_passes reads them).
        proc = self.spawn(
            host,
            host,
            [PYTHON, "manage.py", "up", "--role", "reconciler"],
            env={**self.env, "LOG_LEVEL": "info", "RECONCILE_LOG_PASSES": "true"},
        )
        self.wait_for(proc, lambda: "PODI reconciler is up" in proc.tail(), "reconciler up")
        return proc

    def reconcile_passes(self) -> list[dict]:
        """Every reconciler pass the recon hosts logged, in start order: ``host``, ``pid``,
        ``holder``, ``start``, ``end`` (None while running, or when its process was killed)."""
        passes: dict[str, dict] = {}
        for log in sorted(self.logs.glob("recon*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if '"reconcile pass ' not in line:
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue  # a line cut short by kill -9
                if item.get("message") not in ("reconcile pass started", "reconcile pass ended"):
                    continue
                entry = passes.setdefault(
                    item["holder"],
                    {
                        "host": log.stem,
                        "pid": int(item["holder"].split(":")[1]),
                        "holder": item["holder"],
                        "start": item["startedAt"],
                        "end": None,
                    },
                )
                if item["message"] == "reconcile pass ended":
                    entry["end"] = item["endedAt"]
        return sorted(passes.values(), key=lambda p: p["start"])

    def reconciler_mid_pass(self, host: str) -> bool:
        """Whether ``host``'s reconciler has logged a pass start and not yet its end."""
        log = self.logs / f"{host}.log"
        if not log.exists():
            return False
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - 8192))
            tail = handle.read().decode(errors="replace").splitlines()
        lines = [line for line in tail if '"reconcile pass ' in line]
        return bool(lines) and '"reconcile pass started"' in lines[-1]

    def start_executor(self, host: str) -> Proc:
        proc = self.spawn(
            host,
            host,
            [PYTHON, "-m", "tests.fleet.services", "comfyui", "--host", self.ip(host),
             "--port", "8188", "--root", str(self.dir / host)],
            env={**self.podi_env(), "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        url = f"http://{self.ip(host)}:8188/system_stats"
        self.wait_for(proc, lambda: httpx.get(url, timeout=3).status_code == 200, "ComfyUI")
        return proc

    def start_hook(self) -> Proc:
        proc = self.spawn(
            "hook",
            "hook",
            [PYTHON, "-m", "tests.fleet.services", "webhooks", "--host", self.ip("hook"),
             "--port", "9000", "--log", str(self.hook_log)],
            env={**self.podi_env(), "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        url = f"http://{self.ip('hook')}:9000/health"
        self.wait_for(proc, lambda: httpx.get(url, timeout=3).status_code == 200, "receiver")
        return proc

    def render_nginx_site(self) -> str:
        """deploy/nginx/podi.conf with this fleet's hosts, certificate and static dir."""
        site = (DEPLOY / "nginx" / "podi.conf").read_text()
        replacements = {
            "server 10.0.0.11:8000": f"server {self.ip('web1')}:8000",
            "server 10.0.0.12:8000": f"server {self.ip('web2')}:8000",
            "podi.example.com": self.ip("lb"),
            "/etc/ssl/podi/fullchain.pem": str(self.dir / "tls" / "cert.pem"),
            "/etc/ssl/podi/privkey.pem": str(self.dir / "tls" / "key.pem"),
            "/srv/podi/var/static/": f"{self.data}/static/",
        }
        for old, new in replacements.items():
            if old not in site:
                raise AssertionError(f"deploy/nginx/podi.conf no longer contains {old!r}")
            site = site.replace(old, new)
        site = site.replace("listen [::]:80;", "").replace("listen [::]:443 ssl http2;", "")
        return site

    def start_nginx(self) -> Proc:
        root = self.dir / "nginx"
        (root / "tmp").mkdir(parents=True)
        self._certificate(self.dir / "tls")
        (root / "podi.conf").write_text(self.render_nginx_site())
        (root / "nginx.conf").write_text(
            f"""user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {self.logs}/nginx-error.log warn;
events {{ worker_connections 2048; }}
http {{
    include /etc/nginx/mime.types;
    access_log {self.logs}/nginx-access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    include {root}/podi.conf;
}}
"""
        )
        proc = self.spawn(
            "lb",
            "nginx",
            ["nginx", "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
            env={"PATH": os.environ["PATH"]},
        )
        self.lb_url = f"https://{self.ip('lb')}"
        self.wait_for(
            proc,
            lambda: (
                httpx.get(f"{self.lb_url}/health", verify=self.tls, timeout=3).status_code == 200
            ),
            "nginx → /health",
        )
        return proc

    def _certificate(self, where: Path) -> None:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        where.mkdir()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podi fleet test")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(self.ip("lb")))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        (where / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (where / "key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.ca_file = str(where / "cert.pem")
        self.tls = ssl.create_default_context(cafile=self.ca_file)

    # --- probes (Django against the fleet's database, in a subprocess) ----------------------

    def probe(self, *args: str, timeout: float = 120) -> dict:
        result = subprocess.run(
            [PYTHON, "-m", "tests.fleet.probe", *args],
            cwd=ROOT,
            env={**self.env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"probe {args[0]} failed:\n{result.stdout}\n{result.stderr}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    # --- the whole fleet ---------------------------------------------------------------------

    def start(self) -> None:
        self.build_network()
        self.env = self.podi_env()
        self.start_postgres()
        self.start_redis()
        self.setup_database()
        self.start_executor("exec1")
        self.start_executor("exec2")
        self.start_hook()
        self.start_web("web1")
        self.start_web("web2")
        self.start_worker("worker1")
        self.start_worker("worker2")
        self.start_reconciler("recon")
        self.start_reconciler("recon2")
        self.start_nginx()

    def errors_in_logs(self) -> dict[str, list[str]]:
        """Tracebacks and 5xx lines in the PODI processes' logs, by log file."""
        found: dict[str, list[str]] = {}
        for log in self.logs.glob("*.log"):
            if not re.match(r"(web|worker|recon)", log.name):
                continue
            lines = [
                line[:300]
                for line in log.read_text(errors="replace").splitlines()
                if "Traceback" in line or '"level": "error"' in line
            ]
            if lines:
                found[log.name] = lines
        return found

    def close(self) -> None:
        for name in reversed(list(self.hosts)):
            with contextlib.suppress(Exception):
                self.kill(name, signal.SIGKILL)
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        if not os.environ.get("PODI_FLEET_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
