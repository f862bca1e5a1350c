"""TLS on both sides, with certificates from trustme (issue 5)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trustme

from proxy._cli import main
from proxy._config import ConfigError, parse_config
from proxy._server import client_context, server_context

from .conftest import eof_within, http_get, policy_text, running_proxy

Q = b"RQ.AZ0070000.CA.*C1.TXT\nLIC/ZZ12345"
DENIED = b"DQ.VTICE0900.CA.*C2.TXT\nOLN/S1234567"


class Pki:
    """A CA, the proxy's server certificate, and files for the config."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.cert_file = self._write("server.pem", self.server.cert_chain_pems[0].bytes())
        self.key_file = self._write("server.key", self.server.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def listen_tls(self, require: bool = True) -> str:
        return (f'[proxy.tls]\ncert = "{self.cert_file}"\nkey = "{self.key_file}"\n'
                f'ca = "{self.ca_file}"\nrequire_client_cert = {str(require).lower()}\n')  # fmt: skip

    def client(self, cert_from: trustme.CA | None = None, **versions: ssl.TLSVersion) -> ssl.SSLContext:
        """A client trusting our CA, presenting a certificate issued by ``cert_from``."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if cert_from is not None:
            cert_from.issue_cert("agency.example").configure_cert(ctx)
        for name, version in versions.items():
            setattr(ctx, name, version)
        return ctx


async def refused(h, ctx: ssl.SSLContext) -> bool:
    """True when the proxy will not carry a message for a client using ``ctx``."""
    try:
        async with h.client(ctx) as c:
            await c.send(Q)
            assert await eof_within(c.stream, 5)
    except (trio.BrokenResourceError, ssl.SSLError):
        pass
    return h.switch.received == []


async def test_mutual_tls_carries_messages_and_replies(tmp_path):
    pki = Pki(tmp_path)
    async with running_proxy(tmp_path, policy_text(), proxy_extra=pki.listen_tls()) as h:
        async with h.client(pki.client(cert_from=pki.ca)) as c:
            await c.send(Q, DENIED)
            frames = await c.receive(2)
        assert h.switch.received and h.switch.received[0].endswith(Q)
        assert any(f.startswith(b"ER.CA0000000.VTICE0900.*C2.TXT") for f in frames)
        assert any(f.startswith(b"RR.") for f in frames)  # the switch's answer came back


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
async def test_client_without_a_trusted_certificate_is_refused(tmp_path, who):
    pki = Pki(tmp_path)
    warnings: list[str] = []
    async with running_proxy(tmp_path, policy_text(), proxy_extra=pki.listen_tls(),
                             warnings=warnings) as h:  # fmt: skip
        other = trustme.CA() if who != "no certificate" else None
        assert await refused(h, pki.client(cert_from=other))
        assert any("TLS handshake with client" in w for w in warnings)
        assert h.proxy.open_connections == 0
        metrics = (await http_get(h.proxy.admin_port, "/metrics"))[1].decode()
        assert "stategate_tls_handshake_failures_total 1.0" in metrics
        # and the proxy keeps serving a good client
        async with h.client(pki.client(cert_from=pki.ca)) as c:
            await c.send(Q)
            await c.receive(1)
        assert len(h.switch.received) == 1


async def test_optional_client_certificate(tmp_path):
    pki = Pki(tmp_path)
    async with running_proxy(tmp_path, policy_text(), proxy_extra=pki.listen_tls(require=False)) as h:
        async with h.client(pki.client()) as c:
            await c.send(Q)
            await c.receive(1)
        assert len(h.switch.received) == 1


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_tls_below_1_2_is_refused(tmp_path):
    pki = Pki(tmp_path)
    warnings: list[str] = []
    ctx = pki.client(cert_from=pki.ca, minimum_version=ssl.TLSVersion.TLSv1_1,
                     maximum_version=ssl.TLSVersion.TLSv1_1)  # fmt: skip
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client itself offer TLS 1.1
    async with running_proxy(tmp_path, policy_text(), proxy_extra=pki.listen_tls(),
                             warnings=warnings) as h:  # fmt: skip
        assert await refused(h, ctx)
    # the proxy itself refused the version (not the client failing on its own)
    assert any("TLS handshake with client" in w and "UNSUPPORTED_PROTOCOL" in w for w in warnings), warnings


async def test_plain_tcp_to_a_tls_listener_gets_nothing_through(tmp_path):
    pki = Pki(tmp_path)
    async with running_proxy(tmp_path, policy_text(), proxy_extra=pki.listen_tls()) as h:
        async with h.client() as c:
            await c.send(Q)
            assert await eof_within(c.stream, 5)
        assert h.switch.received == []


def switch_context(pki: Pki, ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


async def test_upstream_tls(tmp_path):
    pki = Pki(tmp_path)
    extra = f'[proxy.upstream_tls]\nca = "{pki.ca_file}"\n'
    async with running_proxy(tmp_path, policy_text(), proxy_extra=extra,
                             switch_tls=switch_context(pki, pki.ca)) as h:  # fmt: skip
        async with h.client() as c:
            await c.send(Q)
            frames = await c.receive(1)
        assert h.switch.received and h.switch.received[0].endswith(Q)
        assert frames and frames[0].startswith(b"RR.")


async def test_untrusted_upstream_is_an_upstream_error(tmp_path):
    pki = Pki(tmp_path)
    extra = f'[proxy.upstream_tls]\nca = "{pki.ca_file}"\n'
    warnings: list[str] = []
    async with running_proxy(tmp_path, policy_text(), proxy_extra=extra, warnings=warnings,
                             switch_tls=switch_context(pki, trustme.CA())) as h:  # fmt: skip
        async with h.client() as c:
            await c.send(Q)
            assert await eof_within(c.stream, 5)
        assert h.switch.received == []
        assert any("TLS handshake with upstream" in w for w in warnings)
        metrics = (await http_get(h.proxy.admin_port, "/metrics"))[1].decode()
        assert "stategate_upstream_errors_total 1.0" in metrics


def test_tls_config_errors_name_the_problem(tmp_path):
    pki = Pki(tmp_path)
    base = '[proxy]\nupstream = "127.0.0.1:1"\n'
    policy = policy_text()
    cases = {
        '[proxy.tls]\ncert = "x"\n': "`cert` and `key` are required",
        f'[proxy.tls]\ncert = "{pki.cert_file}"\nkey = "{pki.key_file}"\nrequire_client_cert = true\n':
            "`require_client_cert` needs `ca`",
        f'[proxy.tls]\ncert = "{tmp_path}/missing.pem"\nkey = "{pki.key_file}"\n': "cannot load certificates",
    }
    for text, message in cases.items():
        cfg = parse_config(base + text + policy, "t.toml")
        with pytest.raises(ConfigError, match=message):
            server_context(cfg.proxy.tls, "t.toml [proxy.tls]")
    cfg = parse_config(base + '[proxy.upstream_tls]\nrequire_client_cert = true\n' + policy, "t.toml")
    with pytest.raises(ConfigError, match="listen side only"):
        client_context(cfg.proxy.upstream_tls, "t.toml [proxy.upstream_tls]")


def test_check_loads_the_certificates(tmp_path, capsys):
    pki = Pki(tmp_path)
    good = tmp_path / "good.toml"
    good.write_text('[proxy]\nupstream = "127.0.0.1:1"\n' + pki.listen_tls() + policy_text())
    assert main(["check", "-c", str(good)]) == 0
    assert "tls: listen on, client certificates required; upstream off" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace(pki.key_file, str(tmp_path / "nokey.pem")))
    with pytest.raises(SystemExit) as exit_:
        main(["check", "-c", str(bad)])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert "bad.toml: `proxy.tls`: cannot load certificates" in err and "Traceback" not in err
