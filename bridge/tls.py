"""TLS for the broker connection, from the validated settings. Standard library only.

One place loads the CA bundle and the client certificate, the same way for `check`
(bridge.config, which reports a file that cannot be used with its line) and for the
MQTT link (bridge.mqtt, which builds the context on every connect).
"""

from __future__ import annotations

import ssl

from bridge.model import Tls


class TlsSetupError(Exception):
    """A TLS file cannot be used. `key` is the setting at fault (``ca_file`` or
    ``cert_file``), `reason` a phrase for the user."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"mqtt.tls.{key}: {reason}")


def _no_password() -> bytes:
    # Without this callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ValueError("the key file is encrypted; only unencrypted keys are supported")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not usable for TLS ({exc.reason or exc})"
    return str(exc)


def tls_context(tls: Tls) -> ssl.SSLContext:
    """The client context of `tls`; raises TlsSetupError naming the file at fault."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError("ca_file", f"{tls.ca_file}: {_why(exc)}") from exc
    if tls.cert_file:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TlsSetupError("cert_file", f"{tls.cert_file}: {_why(exc)}") from exc
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
