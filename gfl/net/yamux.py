"""Yamux tuned for GFL's traffic, installed on one host at a time (`install`).

py-libp2p 0.8.1's Yamux has no settings for any of these; `TunedYamux` is the
library's muxer with `TunedYamuxStream` as its stream class (bench/transfer.py
measures it against the stock muxer, bench/RESULTS.md has the figures):

- **Frame size.** The library caps each DATA frame's payload at 64 KiB
  (``MAX_MESSAGE_SIZE``), and every frame costs a pass through Yamux's Python
  receive loop and its locks on both ends. A 64 KiB frame plus its 12-byte header
  is also 17 bytes over Noise's 65,519-byte plaintext limit, so each frame went
  out as two Noise messages. We send frames of exactly four Noise messages
  (`FRAME_BYTES`, ~256 KiB), which any Yamux peer accepts: a frame only has to
  fit the receive window (256 KiB at the start, by the spec).
- **Credit in batches.** The receiver answers each read with a WINDOW_UPDATE
  frame (with ``PY_YAMUX_RELEASE_ON_READ`` at its default, and without it still
  for most small reads: its "partial slack" branch), so each small gossip message
  costs a second frame back. `TunedYamuxStream` returns credit once `CREDIT_BATCH`
  has been read: dozens of gossip messages, or each read of a bulk transfer. Not
  go-yamux's half window: the library's sender polls every 10 ms once its window
  is empty, and its window auto-tuning grows only on frequent updates, so credit
  that late slows bulk transfers severalfold. An explicit
  ``PY_YAMUX_RELEASE_ON_READ`` in the environment still returns credit on every
  read. The window size itself is left alone: the library auto-tunes it.
- **Zero-window wake-up.** A writer out of send window polls it every 10 ms, so
  each time the reader's credit arrives the writer sleeps on until its next poll.
  Here the WINDOW_UPDATE that raises ``send_window`` wakes the writer, which still
  polls for the stream closing and still fails after 5 s without credit.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, ISecureConn
from libp2p.custom_types import TMuxerOptions, TProtocol
from libp2p.peer.id import ID
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from gfl.net.rebind import with_globals

# A DATA frame (12-byte header + payload) that fills exactly four Noise messages.
FRAME_BYTES = 4 * MAX_PLAINTEXT_LENGTH
# Credit is returned once this much has been read (or the library's threshold, if less).
CREDIT_BATCH = 16 * 1024
ZERO_WINDOW_POLL_S = 0.01  # the library's poll, still what notices a stream closing
ZERO_WINDOW_TIMEOUT_S = 5.0  # the library's: a reader stalled this long fails the write


def release_on_read() -> bool:
    """Whether the environment asks for credit on every read, as the library reads it."""
    return "PY_YAMUX_RELEASE_ON_READ" in os.environ and _yamux._yamux_release_on_read()


class TunedYamuxStream(YamuxStream):
    """A Yamux stream with larger frames, batched credit and a woken zero-window wait."""

    _send_window: int = 0
    window_waiter: trio.Event | None = None  # the writers' event while out of window

    @property
    def send_window(self) -> int:
        return self._send_window

    @send_window.setter
    def send_window(self, value: int) -> None:
        # Every change goes through here (the library's frame handler adds credit
        # with ``stream.send_window += n``): credit arriving wakes the writers.
        self._send_window = value
        if value > 0 and self.window_waiter is not None:
            self.window_waiter.set()
            self.window_waiter = None

    async def write(self, data: bytes) -> None:
        """The library's ``YamuxStream.write`` with `FRAME_BYTES` frames; a writer out of
        window waits for the WINDOW_UPDATE itself instead of polling every 10 ms."""
        total, sent = len(data), 0
        while sent < total:
            frame = None
            while frame is None:
                async with self.rw_lock.write_lock():
                    if self.send_closed:
                        raise MuxedStreamError("Stream is closed for sending")
                    async with self.window_lock:
                        if self.closed:
                            raise MuxedStreamError("Stream is closed")
                        if self.send_window > 0:
                            n = min(
                                self.send_window, FRAME_BYTES - _yamux.HEADER_SIZE, total - sent
                            )
                            self.send_window -= n
                            head = struct.pack(
                                _yamux.YAMUX_HEADER_FORMAT,
                                0,
                                _yamux.TYPE_DATA,
                                0,
                                self.stream_id,
                                n,
                            )
                            frame = head + data[sent : sent + n]
                        else:  # one event for every writer waiting on this stream
                            if self.window_waiter is None:
                                self.window_waiter = trio.Event()
                            waiter = self.window_waiter
                if frame is None:
                    await self._window_opened(waiter)
            await self.conn._write_frame(frame)
            sent += len(frame) - _yamux.HEADER_SIZE

    async def _window_opened(self, waiter: trio.Event) -> None:
        with trio.move_on_after(ZERO_WINDOW_TIMEOUT_S) as scope:
            while not (self.send_window > 0 or self.closed):
                with trio.move_on_after(ZERO_WINDOW_POLL_S):
                    await waiter.wait()
        if scope.cancelled_caught:
            raise MuxedStreamError(
                f"Timed out waiting for window update after {ZERO_WINDOW_TIMEOUT_S:.0f} seconds."
            )

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        """The library's credit return, but only once `CREDIT_BATCH` is due."""
        increment = 0
        every_read = isinstance(self.conn, TunedYamux) and self.conn.release_on_read
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            due = self.target_recv_window - (self.recv_window + buffered)
            if due > 0 and (due >= min(self._grow_threshold(), CREDIT_BATCH) or every_read):
                increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
        if increment > 0:
            await self.send_window_update(increment, skip_lock=True)

    # read(-1) hands data on in frame-sized slices, like the library's in its own frames
    read = with_globals(YamuxStream.read, MAX_MESSAGE_SIZE=FRAME_BYTES)


class TunedYamux(Yamux):
    """The library's Yamux connection, making `TunedYamuxStream` streams."""

    def __init__(
        self,
        secured_conn: ISecureConn,
        peer_id: ID,
        is_initiator: bool | None = None,
        on_close: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        super().__init__(secured_conn, peer_id, is_initiator, on_close)
        self.release_on_read = release_on_read()  # read once per connection

    open_stream = with_globals(Yamux.open_stream, YamuxStream=TunedYamuxStream)
    handle_incoming = with_globals(Yamux.handle_incoming, YamuxStream=TunedYamuxStream)


def muxer_options() -> TMuxerOptions:
    """The library's default muxers (Yamux, then Mplex), with tuned Yamux."""
    return {TProtocol(YAMUX_PROTOCOL_ID): TunedYamux, TProtocol(MPLEX_PROTOCOL_ID): Mplex}


class TunedMuxerMultistream(MuxerMultistream):
    """The library's muxer negotiation, making `TunedYamux` connections.

    py-libp2p 0.8.1's ``MuxerMultistream.new_conn`` builds ``Yamux`` by name once
    Yamux is negotiated, whatever class ``new_host(muxer_opt=...)`` gave for it, so
    passing `muxer_options` to ``new_host`` alone would leave the stock muxer in use.
    """

    new_conn = with_globals(MuxerMultistream.new_conn, Yamux=TunedYamux)


def install(host: IHost) -> None:
    """Make every connection ``host`` upgrades from now on use `TunedYamux`."""
    upgrader = host.get_network().upgrader  # type: ignore[attr-defined]
    timeout = upgrader.muxer_multistream.negotiate_timeout
    upgrader.muxer_multistream = TunedMuxerMultistream(muxer_options(), timeout)
