"""A cap on the parameter server's connections, so that what libzmq queues for them is capped.

libzmq bounds each connection (``RCVHWM`` messages of at most ``MAXMSGSIZE`` bytes) but has no
limit on how many a bound ROUTER socket accepts, so a flood of connections could queue without
bound. ``ConnectionCap`` follows the socket's monitor (accepted, disconnected, closed: each
event names the connection's file descriptor) and shuts down (``shutdown(2)``, not close: the
descriptor stays libzmq's, which then sees end of file and drops the connection and its queue)
every connection accepted while ``cap`` are open. A connection once kept is never cut, so the
workers already connected are never the ones a flood costs; what it costs is that nobody new
gets in while it lasts (a join, a worker reconnecting), which the server's log says. Total
queued memory is then at most ``cap x RCVHWM x MAXMSGSIZE`` for complete messages; a multipart
message that never ends is not bounded by libzmq (README.md). The monitor is read only where the
server polls; left unread long enough, it stalls libzmq's I/O thread (not fixed yet).
"""

from __future__ import annotations

import os
import socket
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED


class ConnectionCap:
    """Keeps at most ``cap`` connections of ``sock`` (a bound socket) open. ``service()`` handles
    the monitor's events so far; call it whenever ``monitor`` is readable (it never blocks).
    ``cut`` counts the connections shut down; ``on_cut(count_so_far)`` is called for each."""

    def __init__(self, sock: zmq.Socket, cap: int, on_cut: Callable[[int], None]) -> None:
        if cap < 1:
            raise ValueError(f"cap must be at least 1, got {cap}")
        self.cap, self.on_cut = cap, on_cut
        self.monitor = sock.get_monitor_socket(EVENTS)
        self.open: set[int] = set()
        self.cut = 0
        self._sock = sock

    def service(self) -> None:
        """Reads every pending event, then acts on the batch: a descriptor accepted and closed
        within it is gone already (and may be reused), so only those still open are counted or cut."""
        events = []
        while self.monitor.poll(0, zmq.POLLIN):
            events.append(recv_monitor_message(self.monitor))
        accepted: list[int] = []
        for ev in events:
            fd = int(ev["value"])
            if ev["event"] == zmq.EVENT_ACCEPTED:
                accepted.append(fd)
            else:
                self.open.discard(fd)
                if fd in accepted:
                    accepted.remove(fd)
        for fd in accepted:
            if len(self.open) < self.cap:
                self.open.add(fd)
            else:
                _shutdown(fd)
                self.cut += 1
                self.on_cut(self.cut)

    def close(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass  # the socket is closed already
        self.monitor.close(linger=0)


def _shutdown(fd: int) -> None:
    """shutdown(2) of a connection whose descriptor libzmq owns (it closes it in its own time)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return  # closed meanwhile
    try:
        s = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)  # the number now names a file that is no socket: not ours to touch
        return
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    finally:
        s.close()  # the duplicate only
