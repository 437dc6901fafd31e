"""TLS for the relay: an ``ssl.SSLObject`` on memory BIOs over a Trio socket, made for batches.

:class:`trio.SSLStream` is general (any transport, any number of tasks, renegotiation) and
pays for it on every call: each ``send_all`` goes through locks and checkpoints, and each
receive returns at most one TLS record (16 KiB), so a busy reader wakes up four times per
64 KiB. The relay needs three things it cannot give:

* a batch write: many queued frames encrypted in one call into full 16 KiB records and sent
  with one system call;
* a synchronous send from another task while the connection's writer is parked (a lone packet
  is then sent at once instead of waking the writer);
* a read that decrypts everything one ``recv`` brought in.

:class:`TLSStream` does that for one TCP socket and is a complete ``trio.abc.Stream`` for
everything else (the HTTP head, the 101, a proxied connection). One task may receive and one
may send at a time, as with any Trio stream; the synchronous :meth:`TLSStream.send_nowait`
only acts when no send is in flight.

Every byte the SSLObject writes into the outgoing BIO, whatever call produced it, is appended
to one queue of ciphertext (``pending``) in that order, and whoever sends empties that queue
first: TLS records carry sequence numbers and must reach the wire in the order they were
made.
"""

from __future__ import annotations

import itertools
import os
import socket
import ssl
from collections import deque

import trio

# Ciphertext read from the socket per receive: several records, all decrypted before the
# reader yields. Not more: CPython allocates the whole size per recv, and glibc serves blocks
# from 128 KiB up with mmap, page faults and munmap each time.
RECV_SIZE = 64 << 10
# Plaintext asked of the SSLObject per read: one whole record (2^14 bytes at most), which is
# all one call returns anyway; asking for more would only allocate more.
_READ_SIZE = 1 << 14
# The kernel refuses sendmsg with more buffers than IOV_MAX (1024 on Linux).
IOV_MAX = 1024


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for the certificate chain and key files: TLS 1.2 and up, ALPN
    http/1.1, fit for :class:`TLSStream`. Raises OSError or ssl.SSLError for bad files."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return relay_context(ctx)


def relay_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context`` made fit for :class:`TLSStream`: renegotiation refused (TLS 1.2).

    A renegotiation makes a write wait for a read, which a stream whose reader and writer are
    separate tasks cannot do; clients never need it (Tailscale's do not use it). Returns the
    same context, changed.
    """
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


async def write_queue(direct: socket.socket, q: deque, owner: object, *,
                      stall: float | None = None, checkpoint: bool = True) -> None:
    """Send the buffers of ``q`` in order until it is empty, through ``direct`` (a
    non-blocking socket): synchronously while the kernel takes them, else waiting for room,
    with ``owner.blocked`` True meanwhile.

    Raises OSError, and trio.TooSlowError when one wait for room exceeds ``stall`` seconds (the
    peer stopped reading). ``checkpoint``: yield even if no wait was needed, as a Trio send
    should; a writer task that parks when done needs no extra yield.
    """
    waited = False
    while q:
        try:
            n = direct.send(q[0]) if len(q) == 1 else direct.sendmsg(
                list(itertools.islice(q, IOV_MAX)))
        except BlockingIOError:
            n = 0
        while q and n >= len(q[0]):
            n -= len(q.popleft())
        if n:
            q[0] = memoryview(q[0])[n:]
        if q:
            owner.blocked = True  # type: ignore[attr-defined]
            try:
                if stall is None:
                    await trio.lowlevel.wait_writable(direct)
                else:
                    with trio.fail_after(stall):
                        await trio.lowlevel.wait_writable(direct)
            finally:
                owner.blocked = False  # type: ignore[attr-defined]
            waited = True
    if checkpoint and not waited:
        await trio.lowlevel.checkpoint()


class TLSStream(trio.abc.Stream):
    """TLS on ``transport`` (a :class:`trio.SocketStream`, owned: closed by :meth:`aclose`).

    Build one with :meth:`accept` (server) or :meth:`connect` (client); both run the handshake.
    """

    def __init__(self, transport: trio.SocketStream, ssl_object: ssl.SSLObject,
                 incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self.transport_stream = transport
        self.ssl_object = ssl_object
        self.incoming = incoming
        self.outgoing = outgoing
        self._sock = transport.socket
        # Ciphertext made but not yet on the wire, in order.
        self.pending: deque[bytes | memoryview] = deque()
        # True while a send waits for the socket to take more (the peer reads slowly).
        self.blocked = False
        self._send_lock = trio.StrictFIFOLock()
        self._recv_busy = False
        self._plain = b""  # decrypted bytes beyond what a receive_some caller asked for
        self._eof = False
        self._broken = False
        self._closed = False
        # A second handle on the socket, for synchronous sends while no send is in flight.
        self._direct: socket.socket | None = None

    # -----------------------------------------------------------------------------------------
    # Construction

    @classmethod
    async def accept(cls, transport: trio.SocketStream, context: ssl.SSLContext, *,
                     prefix: bytes = b"") -> "TLSStream":
        """Run the server handshake on ``transport``; ``prefix`` is what was already read from
        it (a ClientHello peeked at to route the connection). The caller sets the deadline.

        Raises trio.BrokenResourceError (and closes ``transport``) if the handshake fails.
        """
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(incoming, outgoing, server_side=True)
        self = cls(transport, obj, incoming, outgoing)
        if prefix:
            incoming.write(prefix)
        await self._handshake()
        return self

    @classmethod
    async def connect(cls, transport: trio.SocketStream, context: ssl.SSLContext, *,
                      server_hostname: str | None) -> "TLSStream":
        """Run the client handshake on ``transport``. The caller sets the deadline.

        Raises trio.BrokenResourceError (and closes ``transport``) if the handshake fails.
        """
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(incoming, outgoing, server_side=False,
                               server_hostname=server_hostname)
        self = cls(transport, obj, incoming, outgoing)
        await self._handshake()
        return self

    async def _handshake(self) -> None:
        obj = self.ssl_object
        try:
            while True:
                try:
                    obj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                out = self.outgoing.read()
                if done:
                    if out:
                        self.pending.append(out)
                        # A TLS 1.3 server's session tickets come out after the handshake;
                        # they wait for the first write (trio.SSLStream does the same: some
                        # clients do not expect data before they send). Anything else, such
                        # as a TLS 1.2 server's or a client's last flight, the peer waits for.
                        if not (obj.server_side and obj.version() == "TLSv1.3"):
                            await self._flush()
                    return
                if out:
                    self.pending.append(out)
                    await self._flush()
                data = await self._sock.recv(RECV_SIZE)
                if not data:
                    raise trio.BrokenResourceError("peer closed during the TLS handshake")
                self.incoming.write(data)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            self._broken = True
            self._close_transport_now()
            raise trio.BrokenResourceError("TLS handshake failed: %s" % exc) from exc
        except BaseException:
            self._close_transport_now()
            raise

    # -----------------------------------------------------------------------------------------
    # Receiving

    def _decrypt(self) -> tuple[list[bytes], bool]:
        """Everything the incoming BIO holds, decrypted, and whether reading made TLS bytes to
        send. Marks EOF on close_notify or when the transport ended (a missing close_notify
        is read as EOF, as browsers do)."""
        chunks: list[bytes] = []
        read = self.ssl_object.read
        try:
            while True:
                data = read(_READ_SIZE)
                if not data:  # close_notify (ssl returns b"" for it once received)
                    self._eof = True
                    break
                chunks.append(data)
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self._eof = True
        except ssl.SSLError as exc:
            self._broken = True
            raise trio.BrokenResourceError("TLS error: %s" % exc) from exc
        if self.outgoing.pending:
            # Reading can make TLS send (a KeyUpdate answer, an alert); it must go out in
            # order with everything else.
            self.pending.append(self.outgoing.read())
            return chunks, True
        return chunks, False

    async def receive_chunks(self, recv_size: int = RECV_SIZE) -> list[bytes]:
        """The plaintext of the next socket read (of up to ``recv_size`` bytes of ciphertext),
        as it came out of the TLS records (no join); ``[]`` at EOF. For readers that feed a
        decoder chunk by chunk."""
        if self._plain:
            out, self._plain = [self._plain], b""
            await trio.lowlevel.checkpoint()
            return out
        if self._recv_busy:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._recv_busy = True
        try:
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                chunks, to_send = self._decrypt()
                if to_send and not self._send_lock.locked():
                    # (With a send in flight, that sender flushes it.) A failure here is the
                    # writer's to report; what was read is still good.
                    async with self._send_lock:
                        try:
                            await self._flush()
                        except trio.BrokenResourceError:
                            pass
                if chunks or self._eof:
                    if not chunks:
                        await trio.lowlevel.checkpoint()
                    return chunks
                try:
                    data = await self._sock.recv(recv_size)
                except OSError as exc:
                    self._broken = True
                    raise trio.BrokenResourceError(exc) from exc
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()
        finally:
            self._recv_busy = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        chunks = await self.receive_chunks()
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if max_bytes is not None and len(data) > max_bytes:
            data, self._plain = data[:max_bytes], data[max_bytes:]
        return data

    # -----------------------------------------------------------------------------------------
    # Sending

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken:
            raise trio.BrokenResourceError("TLS stream is broken")
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if not data:
            return
        try:
            self.ssl_object.write(data)
        except ssl.SSLError as exc:  # includes a renegotiation's want-read (refused anyway)
            self._broken = True
            raise trio.BrokenResourceError("TLS error: %s" % exc) from exc
        self.pending.append(self.outgoing.read())

    async def _flush(self, stall: float | None = None, checkpoint: bool = True) -> None:
        """Send ``pending`` until it is empty. Caller holds the send lock (or is the handshake)."""
        try:
            await write_queue(self._direct_socket(), self.pending, self, stall=stall,
                              checkpoint=checkpoint)
        except OSError as exc:
            self._broken = True
            raise trio.BrokenResourceError(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            self._encrypt(data)
            await self._flush()

    async def write(self, parts: list, stall: float | None) -> None:
        """The relay's batch write (see derp/wire.py): encrypt ``parts`` in order as full
        records and send them after what was pending; TooSlowError if the socket takes
        nothing for ``stall`` seconds.

        Small parts are joined first: one record per part would cost a record header, a tag
        and a call each. Sends are serialised (FIFO) with send_all's.
        """
        async with self._send_lock:
            if parts:
                self._encrypt(parts[0] if len(parts) == 1 else b"".join(parts))
            await self._flush(stall, checkpoint=False)

    def send_nowait(self, data: bytes | bytearray) -> bool:
        """Encrypt and send ``data`` now if no send is in flight and nothing is pending.

        Returns False (nothing done) otherwise. True means the data is the stream's: all of
        it went out, or the rest waits in ``pending`` for the next send, which the caller
        must arrange (wake its writer).
        """
        if self._send_lock.locked() or self.pending or self._broken or self._closed:
            return False
        self._encrypt(data)
        out = self.pending[0]
        try:
            n = self._direct_socket().send(out)
        except OSError:  # would block, or broken: the next send deals with it
            n = 0
        if n == len(out):
            self.pending.clear()
        elif n:
            self.pending[0] = memoryview(out)[n:]
        return True

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    def _direct_socket(self) -> socket.socket:
        direct = self._direct
        if direct is None:
            direct = self._direct = socket.socket(fileno=os.dup(self._sock.fileno()))
            direct.setblocking(False)
        return direct

    # -----------------------------------------------------------------------------------------
    # Closing

    def _close_transport_now(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        self.transport_stream.socket.close()

    async def aclose(self) -> None:
        """Send close_notify if that can be done without waiting, then close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if not self._broken and not self._send_lock.locked():
            try:
                self.ssl_object.unwrap()
            except (ssl.SSLError, ValueError):
                pass  # SSLWantReadError: our close_notify is out, theirs not awaited
            tail = self.outgoing.read()
            if tail:
                self.pending.append(tail)
            try:
                direct = self._direct_socket()
                for buf in self.pending:
                    direct.send(buf)
            except OSError:
                pass
        self.pending.clear()
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        await self.transport_stream.aclose()
