"""The direct lane: sharing frames over a TLS 1.3 TCP connection between the two peers.

aiortc's data channel is SCTP in pure Python (tens of MB/s); a TLS stream in Python
moves hundreds. For large files the receiver opens a one-time listener and tells the
sender, over the link's DTLS-protected control channel (in its ``accept``):

- ``candidates``: ``[host, port]`` pairs, one per local address ICE gathered;
- ``cert``: the listener's self-signed certificate (PEM), which the sender pins;
- ``token``: 32 random bytes (hex), which the sender presents first.

The sender's own certificate travels in its ``offer``; the listener requires it as the
TLS client certificate. So both ends are pinned, both certificates were vouched for by
the control channel (and the short authentication string), and nothing is plaintext.
The sender tries every candidate at once; the first that completes the handshake with
the pinned certificate carries the file. If none does within ``CONNECT_TIMEOUT`` the
transfer falls back to the data channel.

The listener accepts exactly one connection that presents the right token. A
connection that fails the handshake, sends a wrong token, or sends nothing within
``HELLO_TIMEOUT`` is dropped; after ``MAX_ATTEMPTS`` connections (counted as TCP
accepts, so failed handshakes count), or after
``LISTEN_TIMEOUT``, the listener closes.

On the stream each frame is a 4-byte big-endian length and the frame itself (the
same frames as on the data channel; docs/protocol.md section 3).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .lanes import BufferPool
from .stats import candidates

log = logging.getLogger("ivisit_nb.direct")

NAME = "direct"
FRAME_PAYLOAD = 512 << 10  # bytes of file per frame on this lane
MAX_FRAME = (1 << 20) + 64  # what a receiver takes (protocol.md); we send smaller frames
CONNECT_TIMEOUT = 0.75  # the sender's budget to get a pinned TLS connection up (then: the data channel)
HELLO_TIMEOUT = 2.0  # a connection must finish TLS and present the token within this
LISTEN_TIMEOUT = 15.0  # the listener gives up after this
MAX_ATTEMPTS = 16  # failed connections a listener tolerates (port scanners)
TOKEN_BYTES = 32
ACK = b"\x01"  # the listener's one-byte answer to a right token
WRITE_BUFFER = 1 << 20
POOL_BUFFERS = 8  # frame buffers a receiving lane keeps for reuse (the disk writer holds up to ~5)
STREAM_LIMIT = 2 << 20  # the reader's buffer: a whole frame fits without pausing the socket
#: Tests and benches may replace the advertised candidates, e.g. "127.0.0.1:1" (refuses).
CANDIDATES_ENV = "IVISIT_NB_DIRECT_CANDIDATES"


class DirectLaneError(ConnectionError):
    """The direct lane could not be set up; the message says why."""


@dataclass(frozen=True)
class Identity:
    """A self-signed certificate and key for one session's direct lanes."""

    cert_pem: str
    key_pem: str

    @property
    def fingerprint(self) -> str:
        return cert_fingerprint(self.cert_pem)

    @classmethod
    def generate(cls, name: str = "ivisit-nb") -> "Identity":
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ivisit-nb direct lane")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return cls(cert_pem, key_pem)

    def _load_chain(self, ctx: ssl.SSLContext) -> None:
        # ssl can only load a key pair from files: write them to a private temp dir, once
        with tempfile.TemporaryDirectory(prefix="ivisit-tls-") as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            with open(cert, "w") as f:
                f.write(self.cert_pem)
            with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(self.key_pem)
            ctx.load_cert_chain(cert, key)

    def server_context(self, peer_cert_pem: str) -> ssl.SSLContext:
        """TLS 1.3 server that requires exactly ``peer_cert_pem`` as the client certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self._load_chain(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=peer_cert_pem)
        return ctx

    def client_context(self, peer_cert_pem: str) -> ssl.SSLContext:
        """TLS 1.3 client that accepts only ``peer_cert_pem`` as the server certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # the certificate itself is pinned; there is no name to check
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=peer_cert_pem)
        self._load_chain(ctx)
        return ctx


def cert_fingerprint(cert_pem: str) -> str:
    """SHA-256 of the certificate's DER form, as lowercase hex."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem)).hexdigest()


def _peer_fingerprint(writer: asyncio.StreamWriter) -> str | None:
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return hashlib.sha256(der).hexdigest() if der else None


def local_addresses(link: Any) -> list[str]:
    """The link's local host addresses as ICE gathered them (not loopback or link-local);
    127.0.0.1 if ICE found none."""
    found = []
    for c in candidates(link):
        if c.side != "local" or c.type != "host":
            continue
        try:
            ip = ipaddress.ip_address(c.address)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local) and c.address not in found:
            found.append(c.address)
    return found or ["127.0.0.1"]


def is_cert(value: Any) -> bool:
    """True for one PEM certificate of a sane size."""
    if not isinstance(value, str) or len(value) > 8192 or "BEGIN CERTIFICATE" not in value:
        return False
    try:
        ssl.PEM_cert_to_DER_cert(value)
    except ValueError:
        return False
    return True


def advertised(addresses: list[str], ports: dict[str, int]) -> list[list[Any]]:
    """``[host, port]`` candidates for an accept, or the override in ``$IVISIT_NB_DIRECT_CANDIDATES``."""
    override = os.environ.get(CANDIDATES_ENV)
    if override:
        pairs = [c.rsplit(":", 1) for c in override.split(",") if ":" in c]
        return [[host.strip("[]"), int(port)] for host, port in pairs]
    return [[a, ports[a]] for a in addresses if a in ports]


# -- the lane -------------------------------------------------------------------------


class DirectTlsLane(asyncio.BufferedProtocol):
    """Frames over one TLS stream (see the module docstring). ``name`` is ``"direct"``.

    Made from the stream pair that carried the handshake; from then on the lane is the
    transport's protocol. TLS decrypts straight into each frame's own buffer (no stream
    buffer, no copies), and a frame is handed on as a read-only view of that buffer.
    Reading pauses while ``ready()`` (the disk's backpressure) waits.
    """

    name = NAME
    frame_payload = FRAME_PAYLOAD

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, describe: str) -> None:
        self.describe = describe
        self.bytes_sent = 0
        self.bytes_received = 0
        self._closed = False
        self._transport: Any = writer.transport
        self._streams = (reader, writer)  # kept: a collected StreamWriter closes its transport
        self._header = bytearray(4)
        self._frame: memoryview | None = None  # the frame being filled, or None while reading a header
        self._size = 0
        self._pool = BufferPool(FRAME_PAYLOAD + 64, POOL_BUFFERS)  # frame buffers, reused once no view holds them
        self._filled = 0
        self._on_frame: Callable[[Any], None] | None = None
        self._ready: Callable[[], Awaitable[None] | None] | None = None
        self._early: list[Any] = []  # frames complete before start_reading
        self._waiting: asyncio.Future[Any] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        leftover = bytes(reader._buffer)  # what the stream had read past the handshake
        reader._buffer.clear()
        self._transport.set_protocol(self)
        if hasattr(self._transport, "set_write_buffer_limits"):
            self._transport.set_write_buffer_limits(high=WRITE_BUFFER)
        self._transport.pause_reading()  # until start_reading
        self._feed(leftover)

    @property
    def open(self) -> bool:
        return not self._closed and not self._transport.is_closing()

    # -- sending ---------------------------------------------------------------------------
    async def send_frame(self, frame: bytes) -> None:
        if not self.open:
            raise ConnectionError(f"the direct lane {self.describe} is closed")
        self._transport.writelines((len(frame).to_bytes(4, "big"), frame))
        self.bytes_sent += len(frame)
        while not self._writable.is_set():
            await self._writable.wait()
            if not self.open:
                raise ConnectionError(f"the direct lane {self.describe} is closed")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- receiving ---------------------------------------------------------------------------
    def start_reading(self, on_frame: Callable[[Any], None], ready: Callable[[], Awaitable[None] | None]) -> None:
        """Read frames until the stream ends: ``on_frame(frame)`` (a read-only memoryview that
        stays valid); then, if ``ready()`` returns an awaitable (backpressure), read on once it is done."""
        self._on_frame, self._ready = on_frame, ready
        early, self._early = self._early, []
        for frame in early:
            self._deliver(frame)
        if not self._closed and self._waiting is None:
            self._transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._frame is None:
            return memoryview(self._header)[self._filled:]
        return memoryview(self._frame)[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        self._advance()

    def _feed(self, data: bytes) -> None:
        """Take bytes that arrived before the lane owned the transport."""
        view = memoryview(data)
        while view and not self._closed:
            target = self.get_buffer(len(view))
            n = min(len(target), len(view))
            target[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def _advance(self) -> None:
        if self._frame is None:
            if self._filled < 4:
                return
            size = int.from_bytes(self._header, "big")
            if not 0 < size <= MAX_FRAME:
                log.warning("direct lane %s: a frame of %d bytes; closing", self.describe, size)
                self.close()
                return
            self._frame, self._filled, self._size = self._pool.take(size), 0, size
            return
        if self._filled < len(self._frame):
            return
        frame = memoryview(self._frame)[: self._size].toreadonly()
        self._frame, self._filled = None, 0
        self.bytes_received += len(frame)
        if self._on_frame is None:
            self._early.append(frame)
            return
        self._deliver(frame)

    def _deliver(self, frame: Any) -> None:
        assert self._on_frame is not None and self._ready is not None
        self._on_frame(frame)
        waiter = self._ready()
        if waiter is None:
            return  # room for more: read on
        if self._closed:
            getattr(waiter, "close", lambda: None)()  # a coroutine never to be awaited
            return
        self._transport.pause_reading()
        self._waiting = asyncio.ensure_future(waiter)  # a task: cancelling it on close is clean
        self._waiting.add_done_callback(self._ready_again)

    def _ready_again(self, _done: "asyncio.Future[None]") -> None:
        self._waiting = None
        if not self._closed:
            self._transport.resume_reading()

    def eof_received(self) -> bool:
        log.debug("direct lane %s: the peer closed the stream", self.describe)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        log.debug("direct lane %s ended: %r", self.describe, exc)  # the control channel says why
        self._closed = True
        self._writable.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writable.set()
        if self._waiting is not None:
            self._waiting.cancel()
        self._transport.close()


# -- the receiver's side: a one-time listener -------------------------------------------


class Listener:
    """A one-time listener for one transfer. ``info`` goes into the accept."""

    def __init__(self, identity: Identity, peer_cert_pem: str, describe: str) -> None:
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self.describe = describe
        self.attempts = 0  # connections refused after the handshake (wrong token, second one ...)
        self.connections = 0  # TCP connections accepted, whatever became of them
        self.lane: asyncio.Future[DirectTlsLane] = asyncio.get_running_loop().create_future()
        self._context = identity.server_context(peer_cert_pem)
        self._identity = identity
        self._peer_fingerprint = cert_fingerprint(peer_cert_pem)
        self._servers: list[asyncio.AbstractServer] = []
        self._timeout: asyncio.TimerHandle | None = None
        self.info: dict[str, Any] = {}

    async def start(self, addresses: list[str]) -> dict[str, Any]:
        """Listen on ``addresses`` (port chosen by the OS) and return the accept's ``direct`` info."""
        ports: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        for address in addresses:
            try:
                server = await loop.create_server(
                    self._accepted, address, 0, ssl=self._context, ssl_handshake_timeout=HELLO_TIMEOUT,
                )
            except OSError as exc:
                log.debug("cannot listen on %s: %s", address, exc)
                continue
            self._servers.append(server)
            ports[address] = server.sockets[0].getsockname()[1]
        if not ports:
            raise DirectLaneError("could not listen on any local address for the direct lane")
        self._timeout = asyncio.get_running_loop().call_later(LISTEN_TIMEOUT, self.close)
        self.info = {
            "candidates": advertised(addresses, ports),
            "cert": self._identity.cert_pem,
            "token": self.token.hex(),
        }
        return self.info

    def _accepted(self) -> asyncio.StreamReaderProtocol:
        """A TCP connection came in (before TLS): count it, so connections that fail the
        handshake count towards ``MAX_ATTEMPTS`` too; then read it as a stream."""
        self.connections += 1
        if self.connections > MAX_ATTEMPTS and not self.lane.done():
            log.info("direct lane %s: %d connections and none got through; closing the listener", self.describe, MAX_ATTEMPTS)
            asyncio.get_running_loop().call_soon(self.close)
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=STREAM_LIMIT), self._on_connection)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.lane.done():
                raise DirectLaneError("a second connection")
            if _peer_fingerprint(writer) != self._peer_fingerprint:
                raise DirectLaneError("a client certificate other than the pinned one")
            token = await asyncio.wait_for(reader.readexactly(TOKEN_BYTES), HELLO_TIMEOUT)
            if not hmac.compare_digest(token, self.token):
                raise DirectLaneError("a wrong token")
            if self.lane.done():  # another candidate of the same sender won meanwhile
                raise DirectLaneError("a second connection")
        except (DirectLaneError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as exc:
            self.attempts += 1
            log.info("direct lane %s: refused a connection: %s", self.describe, str(exc) or type(exc).__name__)
            writer.close()
            if self.attempts >= MAX_ATTEMPTS:
                self.close()
            return
        writer.write(ACK)  # the sender uses the lane only once it has this
        self.lane.set_result(DirectTlsLane(reader, writer, self.describe))
        self._close_servers()

    def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._timeout is not None:
            self._timeout.cancel()

    def close(self) -> None:
        """Stop listening; a lane already up stays up (close it separately)."""
        self._close_servers()
        if not self.lane.done():
            self.lane.cancel()


# -- the sender's side ----------------------------------------------------------------


def check_info(info: Any) -> tuple[list[tuple[str, int]], str, bytes]:
    """``(candidates, cert, token)`` from an accept's ``direct`` info, or ``DirectLaneError``."""
    if not isinstance(info, dict):
        raise DirectLaneError("the accept has no direct-lane details")
    cands, cert, token = info.get("candidates"), info.get("cert"), info.get("token")
    if not isinstance(cands, list) or not 1 <= len(cands) <= 16:
        raise DirectLaneError("direct-lane candidates must be a list of 1 to 16 [host, port] pairs")
    pairs = []
    for c in cands:
        if not (isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and isinstance(c[1], int)):
            raise DirectLaneError("a direct-lane candidate is not [host, port]")
        try:
            ipaddress.ip_address(c[0])
        except ValueError:
            raise DirectLaneError(f"direct-lane candidate {c[0]!r:.60} is not an IP address") from None
        if not 0 < c[1] < 65536:
            raise DirectLaneError(f"direct-lane candidate port {c[1]} is out of range")
        pairs.append((c[0], c[1]))
    if not is_cert(cert):
        raise DirectLaneError("the direct-lane certificate is not a PEM certificate")
    if not (isinstance(token, str) and len(token) == 2 * TOKEN_BYTES):
        raise DirectLaneError("the direct-lane token is not 64 hex digits")
    try:
        return pairs, cert, bytes.fromhex(token)
    except ValueError:
        raise DirectLaneError("the direct-lane token is not 64 hex digits") from None


async def connect(identity: Identity, info: Any, describe: str, timeout: float = CONNECT_TIMEOUT) -> DirectTlsLane:
    """Connect to the first candidate that completes a pinned TLS 1.3 handshake; ``DirectLaneError`` if none
    does within ``timeout``."""
    candidates, cert, token = check_info(info)
    context = identity.client_context(cert)
    pinned = cert_fingerprint(cert)

    async def attempt(host: str, port: int) -> DirectTlsLane:
        reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=None, limit=STREAM_LIMIT)
        if _peer_fingerprint(writer) != pinned:  # belt and braces: TLS verified it already
            writer.close()
            raise DirectLaneError(f"{host}:{port} presented another certificate")
        writer.write(token)
        await writer.drain()
        if await reader.readexactly(1) != ACK:
            writer.close()
            raise DirectLaneError(f"{host}:{port} did not accept our token")
        return DirectTlsLane(reader, writer, describe)

    tasks = [asyncio.ensure_future(attempt(h, p)) for h, p in candidates]
    errors: list[str] = []
    winner: DirectTlsLane | None = None
    try:
        for next_done in asyncio.as_completed(tasks, timeout=timeout):
            try:
                winner = await next_done
                return winner
            except asyncio.TimeoutError:
                raise
            except (OSError, ssl.SSLError, DirectLaneError, ConnectionError, asyncio.IncompleteReadError) as exc:
                errors.append(str(exc) or type(exc).__name__)
    except asyncio.TimeoutError:
        errors.append(f"no candidate answered within {timeout:g} s")
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None and task.result() is not winner:
                task.result().close()  # a second candidate also got through
    raise DirectLaneError("could not open the direct lane: " + "; ".join(errors[:4]))
