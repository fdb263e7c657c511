"""The hand-off from the serving process to the shadow sender, at the packet level.

Chosen requests wait (at most HANDOFF_SECONDS, or HANDOFF_REQUESTS of them) and go over
in one packet: one write and one wake-up of the sender per batch. The sender reads every
request of a batch; one it cannot read costs the rest of its batch, which are counted
dropped, so every request handed over is still accounted for.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from modelship_runtime import shadow, shadow_sender
from modelship_runtime.shadow import HANDOFF_REQUESTS, Outgoing, SenderProcess
from modelship_runtime.shadow_sender import BATCH, DROPPED, TARGET, Sender


def outgoing(i: int, mirror: Any = None) -> Outgoing:
    item = Outgoing(b"/predict", f"rid-{i}".encode(), b"\r\nx-api-key: k", mirror)
    item.chunks = [b'{"features": [', str(i).encode(), b"]}"]
    return item


def reader() -> tuple[socket.socket, SenderProcess]:
    """A SenderProcess writing to our end of a socket pair instead of a sender process."""
    process = SenderProcess(version="1", token=None, concurrency=1, queue_size=10,
                            timeout=1.0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    process._sock = theirs  # the process's end, as _spawn leaves it
    theirs.setblocking(False)
    process.max_message = 1 << 20
    return ours, process


def packets(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 20))
        except BlockingIOError:
            return out


def test_requests_chosen_together_go_over_in_one_packet() -> None:
    async def main() -> tuple[list[bytes], list[bytes], float]:
        ours, process = reader()
        for i in range(5):
            process.hand(7, outgoing(i), b"[1]")
        before = packets(ours)  # nothing yet: the batch waits for its timer
        _, pending = process.figures()
        await asyncio.sleep(shadow.HANDOFF_SECONDS * 4)
        return before, packets(ours), pending

    before, after, pending = asyncio.run(main())
    assert before == []
    assert pending == 5  # waiting in the batch counts as pending
    assert len(after) == 1
    kind, n = BATCH.unpack_from(after[0])
    assert (kind, n) == (b"B", 5)


def test_a_full_batch_goes_at_once() -> None:
    async def main() -> list[bytes]:
        ours, process = reader()
        for i in range(HANDOFF_REQUESTS):
            process.hand(7, outgoing(i), b"[1]")
        return packets(ours)  # no wait: the batch is full

    got = asyncio.run(main())
    assert len(got) == 1 and BATCH.unpack_from(got[0])[1] == HANDOFF_REQUESTS


def test_the_sender_reads_every_request_of_a_batch_and_counts_an_unreadable_rest() -> None:
    async def main() -> tuple[list[bytes], list[int]]:
        ours, process = reader()
        for i in range(3):
            process.hand(7, outgoing(i), b"[1]")
        process.flush()
        packet = packets(ours)[0]
        counts = memoryview(bytearray(shadow_sender.BLOCK_BYTES)).cast("Q")
        sender = Sender(ours, counts, concurrency=1, queue_size=10, timeout=1.0,
                        max_message=1 << 20)
        target = TARGET.pack(b"T", 7) + json.dumps(
            {"url": "http://canary:8080", "shadow": "1", "version": "1"}).encode()
        sender._message(memoryview(target))
        sender._message(memoryview(packet))
        queued = [sender.queue.get_nowait()[1] for _ in range(sender.queue.qsize())]
        # The same batch cut short inside its second request: the first is read, the
        # other two are counted dropped.
        cut = len(packet) - 2 * (len(packet) - BATCH.size) // 3 + 4
        sender._message(memoryview(packet[:cut]))
        assert sender.queue.qsize() == 1
        return queued, [counts[DROPPED]]

    queued, (dropped,) = asyncio.run(main())
    assert len(queued) == 3
    for i, request in enumerate(queued):
        assert request.startswith(b"POST /predict HTTP/1.1\r\nhost: canary:8080")
        assert f"x-request-id: rid-{i}".encode() in request
        assert b"x-api-key: k" in request and b"x-modelship-stable-prediction: [1]" in request
        assert request.endswith(f'{{"features": [{i}]}}'.encode())
    assert dropped == 2


@pytest.mark.parametrize("full", [True, False])
def test_a_batch_the_socket_cannot_take_is_dropped_whole(full: bool) -> None:
    async def main() -> dict[str, float]:
        ours, process = reader()
        if full:  # the sender is behind: its socket buffer is full
            sock = process._sock
            assert sock is not None
            while True:
                try:
                    sock.send(b"x" * 65536)
                except BlockingIOError:
                    break
        else:  # the sender is gone
            ours.close()
        for i in range(4):
            process.hand(7, outgoing(i), b"[1]")
        process.flush()
        figures, pending = process.figures()
        assert pending == 0
        await process.close()
        return figures

    figures = asyncio.run(main())
    assert figures["dropped"] == 4 and figures["skipped"] == 0


def test_busy_is_requests_in_flight_or_most_of_a_core_lately() -> None:
    """The shadow mirror's shedding signal, on clocks the test moves."""
    wall, cpu, flight = [100.0], [10.0], [False]
    busy = shadow.Busy(lambda: flight[0], cpu=lambda: cpu[0], clock=lambda: wall[0])
    assert not busy()  # nothing measured yet, nothing in flight
    flight[0] = True
    assert busy()
    flight[0] = False
    wall[0] += 0.1
    cpu[0] += 0.09  # 90% of a core over the last 100 ms: a client sending back to back
    assert busy() and busy.share == pytest.approx(0.9)
    wall[0] += 0.01  # within the window: the last figure holds, the CPU is not read
    cpu[0] += 0.001
    assert busy() and busy.share == pytest.approx(0.9)
    wall[0] += 0.1
    cpu[0] += 0.01  # since the last reading: 11 ms of CPU in 110 ms, 10% of a core
    assert not busy() and busy.share == pytest.approx(0.1)
