"""A flood of connections at the parameter server: what libzmq queues for them, with the
connection cap (comm.max_connections) and without one. The server waits for its workers in this
process (a thread); the senders, each pushing RCVHWM messages of the largest size the server
takes, are another process, so that the resident memory measured here is the server's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

from distbp.comm.zmq_ps import RCVHWM, ZMQServer

MIB = 2 ** 20

SENDERS = """
import sys, time
import numpy as np, zmq
from distbp.comm import wire
endpoint, senders, numel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = zmq.Context()
frames = wire.encode("grad", np.zeros(numel, np.float32), step=0, rank=0, gen=0, loss=0.0, stop=0)
socks = []
for i in range(senders):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    socks.append(s)
for _ in range({hwm}):
    for s in socks:
        try:
            s.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)  # one buffer, shared
        except zmq.Again:
            pass
time.sleep(float(sys.argv[4]))
ctx.destroy(linger=0)
""".replace("{hwm}", str(RCVHWM))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def connection_flood(senders: int = 200, max_connections: int | None = 4, numel: int = 250_000,
                     hold_s: float = 4.0) -> dict:
    """``senders`` connections, each sending RCVHWM gradient-sized messages (``numel`` float32)
    to a server waiting for its one worker; its peak RSS growth against the documented bound,
    max_connections x RCVHWM x message size. ``max_connections=None``: no cap (a million)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    cap = max_connections or 10 ** 6
    server = ZMQServer({"endpoint": endpoint, "workers": 1, "heartbeat_s": 0.5, "timeout_s": 5.0,
                        "join_timeout_s": hold_s + 3.0, "curve": None, "insecure": False, "max_connections": cap})
    lines: list[str] = []
    server.log_to(lines.append)
    before = _rss_mib()
    thread = threading.Thread(target=lambda: _quietly(server.join, "0123456789abcdef", numel), daemon=True)
    thread.start()
    flood = subprocess.Popen([sys.executable, "-c", SENDERS, endpoint, str(senders), str(numel), str(hold_s)])
    peak = before
    try:
        while flood.poll() is None:
            peak = max(peak, _rss_mib())
            time.sleep(0.05)
    finally:
        flood.kill()
        flood.wait()
        thread.join(hold_s + 10)
        server.close()
    message_mib = (numel * 4) / MIB
    return {"senders": senders, "max_connections": max_connections, "message_mib": message_mib,
            "rss_growth_mib": peak - before,
            "bound_mib": cap * RCVHWM * message_mib if max_connections else None,
            "refused": server._cap.cut if server._cap is not None else 0,
            "logged": sum("refused a connection" in line for line in lines)}


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - nobody joins: the server gives up waiting, as it should
        pass
