"""A real forward proxy for the proxy tests: Debian's tinyproxy, in a network namespace the test made, and Debian's
stunnel in front of it for an https:// proxy.

Owns the tinyproxy it starts (`TinyProxy.start()` / `stop()`): foreground, its own config and log in `root`, listening
on `host:port` (inside `netns` when given), accepting clients from the test's addresses, CONNECT allowed to any port,
with Basic proxy authentication when `basic_auth` names a user and password. `connects()` reads back, from
tinyproxy's own log, the CONNECT requests it carried (`HOST:PORT` each), and `requests()` every request line it
received (`GET http://...` for a request it forwarded): what proves a client went through it. `TLSFront` (stunnel,
foreground, its own config in `root`) accepts TLS with a test CA's certificate and passes the bytes inside on to
tinyproxy: together, a proxy that clients reach over TLS (`https://` in HTTPS_PROXY).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.containerd import HarnessError
from lab.procs import stop_process
from lab.registries import TestCA, _wait_listening, free_port

_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


@dataclass
class TinyProxy:
    root: Path
    host: str = "127.0.0.1"
    netns: str = ""
    allow: tuple[str, ...] = ("127.0.0.1", "10.0.0.0/8")
    basic_auth: tuple[str, str] | None = None  # (user, password) a client must send as Proxy-Authorization
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "tinyproxy.log"

    def start(self) -> TinyProxy:
        binary = shutil.which("tinyproxy")
        if binary is None:
            raise HarnessError("tinyproxy is missing (scripts/setup.sh installs tinyproxy-bin)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.root / "tinyproxy.conf"
        config.write_text("\n".join([
            f"Port {self.port}", f"Listen {self.host}", "Timeout 60", f'LogFile "{self.log_path}"', "LogLevel Connect",
            "MaxClients 50", "DisableViaHeader Yes", *(f"Allow {a}" for a in self.allow),
            *([f"BasicAuth {self.basic_auth[0]} {self.basic_auth[1]}"] if self.basic_auth else [])]) + "\n")
        argv = [binary, "-d", "-c", str(config)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        out = self.root / "tinyproxy.out"
        with out.open("ab") as sink:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        _wait_listening(self.port, self.process, out, "tinyproxy", self.host)
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request tinyproxy received, in order."""
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return [(m.group(1), m.group(2)) for m in _REQUEST.finditer(text)]

    def connects(self) -> list[str]:
        """The HOST:PORT of every CONNECT tunnel tinyproxy was asked for."""
        return [target for method, target in self.requests() if method == "CONNECT"]


@dataclass
class TLSFront:
    """stunnel accepting TLS on `host:port` (inside `netns`) and passing the plain bytes to `target` (HOST:PORT)."""

    root: Path
    tls: TestCA
    target: str
    host: str = "127.0.0.1"
    netns: str = ""
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> TLSFront:
        binary = shutil.which("stunnel4") or shutil.which("stunnel")
        if binary is None:
            raise HarnessError("stunnel is missing (scripts/setup.sh installs stunnel4)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.root / "stunnel.conf"
        out = self.root / "stunnel.out"
        config.write_text("\n".join([
            "foreground = yes", "pid =", f"output = {out}", "debug = notice", "[proxy]",
            f"accept = {self.host}:{self.port}", f"connect = {self.target}", f"cert = {self.tls.cert_pem}",
            f"key = {self.tls.key_pem}"]) + "\n")
        argv = [binary, str(config)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with out.open("ab") as sink:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        _wait_listening(self.port, self.process, out, "stunnel", self.host)
        return self

    def stop(self) -> None:
        stop_process(self.process)
