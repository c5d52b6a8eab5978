"""Server configuration: the one place where settings are defined and defaulted.

Everything else receives a :class:`ServerConfig` (or the part it needs) through its
constructor.  ``dialspell serve`` builds it from an optional TOML file
(:func:`load_config`; keys are the field names) and then its command-line flags, which
win; tests build it directly.  docs/configuration.md documents every field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    # SIP processes sharing the port (Linux SO_REUSEPORT; engine/processes.py): one
    # uses one core at most.
    sip_processes: int = 1
    # Instant messages (MESSAGE, engine/messages.py) waiting for devices' answers: in
    # all, and from one source address.
    max_pending_messages: int = 1000
    max_pending_messages_per_source: int = 50
    # Overload: a new INVITE without credentials that waited longer than
    # this (seconds) in the UDP socket's queue gets 503 + Retry-After; 0 turns it off.
    overload_delay: float = 0.4
    # Shutdown: how long SIP keeps running for the BYEs and CANCELs that end the calls.
    stop_grace: float = 1.0
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
    # Base URL of the callback service sys.GoogleVoiceCall talks to (docs/callbacks.md).
    google_voice_url: str | None = None
    # Where the callback-affinity file for a front proxy is written (docs/callbacks.md);
    # default <data_dir>/callback-affinity.tsv.
    callback_affinity_file: Path | None = None
    # Provider registrations: how often the providers table is re-read (seconds).
    provider_poll_interval: float = 5.0
    # The web side: customers may sign up over the API only when this is on.
    signup_enabled: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None

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


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message says what to fix."""


_PATH_FIELDS = frozenset({"data_dir", "tls_cert", "tls_key", "callback_affinity_file"})


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> ServerConfig:
    """Build a :class:`ServerConfig` from a TOML file (may be None) and ``overrides``
    (flags given on the command line; None values mean "not given")."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as handle:
                values.update(tomllib.load(handle))
        except OSError as exc:
            raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f for f in dataclasses.fields(ServerConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown configuration key(s): {', '.join(unknown)}; see docs/configuration.md for the list"
        )
    for name in _PATH_FIELDS & set(values):
        values[name] = Path(values[name])
    if "dns_server" in values and values["dns_server"] is not None:
        host, _, port = str(values["dns_server"]).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("dns_server must be written HOST:PORT, e.g. 127.0.0.1:53")
        values["dns_server"] = (host, int(port))
    for name, value in values.items():
        default = known[name].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
            raise ConfigError(f"{name} must be a whole number")
        if isinstance(default, float) and not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number")
        if name == "sip_processes" and not 1 <= value <= MAX_SIP_PROCESSES:
            raise ConfigError(f"sip_processes must be between 1 and {MAX_SIP_PROCESSES}")
        if name == "sip_processes" and value > 1 and not sys.platform.startswith("linux"):
            raise ConfigError("sip_processes above 1 needs Linux (SO_REUSEPORT): use 1 here")
        if name in _PORT_FIELDS and not 0 <= value <= 65535:
            raise ConfigError(f"{name} {value} is not a port number: use 1-65535 (0 picks a free one)")
    return ServerConfig(**values)


_PORT_FIELDS = frozenset({"sip_port", "http_port", "smtp_port"})
MAX_SIP_PROCESSES = 64
