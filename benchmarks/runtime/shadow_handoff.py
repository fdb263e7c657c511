"""What choosing and handing over a mirrored request costs the serving process, in-process.

    PYTHONPATH=runtime taskset -c 0 .venv/bin/python benchmarks/runtime/shadow_handoff.py

Runs the serving side of shadow traffic (Mirror.choose, then keeping the body and
predictions, Mirror.submit, and one flush to the sender per 20 requests) for a one-row
/predict request, 50,000 times, against a socket pair whose far end this script drains
(no sender process), and prints the CPU time per request: `choose` alone (what a request
not chosen costs at a fraction below 1 is less), and everything a chosen request costs.
"""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
from modelship_runtime.model import Prediction
from modelship_runtime.shadow import Mirror, SenderProcess

HEADERS = [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"wrk"),
           (b"content-type", b"application/json"), (b"content-length", b"104")]
BODY = (b'{"features": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, '
        b'1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]}')
N = 50_000


async def main() -> None:
    sender = SenderProcess(version="1", token=None, concurrency=1, queue_size=10,
                           timeout=1.0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    ours.setblocking(False)
    sender._sock = theirs  # as if the sender process were running
    sender.max_message = 1 << 20
    sender.declare = lambda index, url: None  # type: ignore[method-assign]
    mirror = Mirror("http://127.0.0.1:1", sender, fraction=1.0, max_header=8192)
    prediction = Prediction(np.array([1]), None)

    def drain() -> None:
        while True:
            try:
                ours.recv(1 << 20)
            except BlockingIOError:
                return

    for phase in ("choose", "choose+hand-off"):
        t0 = time.process_time()
        for i in range(N):
            out = mirror.choose("POST", "/predict", b"abcd-1", HEADERS)
            assert out is not None
            if phase != "choose":
                out.chunks = [BODY]
                out.observe(prediction)
                mirror.submit(out, 200)
                if i % 20 == 19:
                    sender.flush()
                    drain()
        spent = time.process_time() - t0
        print(f"{phase}: {spent / N * 1e6:.2f} us of CPU per request")
    figures, _ = sender.figures()
    assert figures["dropped"] == 0 and figures["skipped"] == 0, figures


if __name__ == "__main__":
    asyncio.run(main())
