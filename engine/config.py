"""Server configuration: the one place where settings are defined and defaulted.

Everything else receives a :class:`ServerConfig` (or the part it needs) through its
constructor.  The CLI builds it from flags; tests build it directly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = Path("./dialspell-data")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Settings of one ``dialspell serve`` process (each documented in docs/configuration.md)."""

    data_dir: Path = DEFAULT_DATA_DIR
    sip_host: str = "0.0.0.0"
    sip_port: int = 5060
    http_host: str | None = None  # default: same as sip_host
    http_port: int = 8080
    domain: str | None = None  # default: the sip_host address
    # Registrar (RFC 3261 10.3): granted expiry is clamped into [min, max].
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_bindings_per_account: int = 10
    # Digest authentication and the brute-force lock-out.
    nonce_lifetime: float = 300.0
    auth_max_failures: int = 5
    auth_failure_window: float = 60.0
    auth_lockout: float = 900.0
    # NAT keep-alive interval for accounts with the keepalive flag.
    keepalive_interval: float = 15.0
    sweep_interval: float = 10.0
    # Dialplan executions (docs/dialplan-api.md, "Limits").
    sandbox_workers: int = 2
    executions_per_customer: int = 5
    executions_per_server: int = 1000
    retry_after: int = 5
    # Outbound mail (traces, sys.Email).  No host: mails go to <data_dir>/outbox.
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    mail_from: str = "dialspell@localhost"
    # sys.WebGet may not reach private/loopback addresses unless the operator allows it.
    webget_allow_private: bool = False
    # Resolver for RFC 3263 lookups: None = the system's; else (ip, port).
    dns_server: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def default_domain(self) -> str:
        if self.domain:
            return self.domain.lower()
        if self.sip_host in ("0.0.0.0", "::"):
            return "127.0.0.1"
        return self.sip_host

    @property
    def advertised_host(self) -> str:
        """The address we put in Via/Contact of requests we originate."""
        if self.sip_host in ("0.0.0.0", "::"):
            return "127.0.0.1"
        host = self.sip_host
        try:
            if ipaddress.ip_address(host).version == 6:
                return f"[{host}]"
        except ValueError:
            pass
        return host
