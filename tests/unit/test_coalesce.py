"""engine.coalesce alone: the one latest-wins slot and the mailbox (pure Python, no Qt)."""

from __future__ import annotations

import threading

import pytest

from engine.coalesce import CLOSED, Delivery, LatestSlot, Mailbox


def test_get_reads_the_newest_without_taking_it():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.get(0, timeout=0.01) == (0, None)
    for v in range(5):
        slot.put(v)
    assert slot.get(0, timeout=0) == (5, 4)
    assert slot.get(0, timeout=0) == (5, 4)  # still there: get does not take
    assert slot.get(5, timeout=0.01) == (5, None)  # nothing newer than what was seen
    t = threading.Timer(0.05, lambda: slot.put(99))
    t.start()
    assert slot.get(5, timeout=2) == (6, 99)
    assert slot.take(timeout=0) == 99
    assert slot.get(5, timeout=0) == (6, None)  # taken meanwhile


def test_latest_slot_keeps_only_the_newest():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1
    assert slot.put(3) == 2
    assert slot.dropped == 2
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0.01) is None  # empty: timeout
    assert slot.take_nowait() is None


def test_latest_slot_close_wakes_a_waiting_consumer():
    slot: LatestSlot[int] = LatestSlot()
    got: list = []
    t = threading.Thread(target=lambda: got.append(slot.take()))
    t.start()
    slot.close()
    t.join(2)
    assert got == [CLOSED]
    with pytest.raises(RuntimeError):
        slot.put(1)


def test_latest_slot_drains_before_reporting_closed():
    slot: LatestSlot[str] = LatestSlot()
    slot.put("last")
    slot.close()
    assert slot.take() == "last"
    assert slot.take() is CLOSED


def test_latest_slot_under_a_fast_producer_loses_only_intermediate_items():
    slot: LatestSlot[int] = LatestSlot()
    seen: list[int] = []
    done = threading.Event()

    def consume():
        while True:
            item = slot.take(timeout=1)
            if item is CLOSED:
                done.set()
                return
            if item is not None:
                seen.append(item)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(1, 5001):
        slot.put(i)
    slot.close()
    t.join(5)
    assert done.is_set()
    assert seen[-1] == 5000  # the last one always arrives
    assert seen == sorted(seen)  # never out of order
    assert len(seen) + slot.dropped == 5000


def test_mailbox_priority_commands_then_slots_in_order():
    box = Mailbox(["preview", "render"])
    box.put("render", "r1")
    box.put("render", "r2")
    box.put("preview", "p1")
    box.send("open")
    box.send("encode")
    got = [box.take(timeout=0) for _ in range(4)]
    assert got == [Delivery("command", "open"), Delivery("command", "encode"), Delivery("preview", "p1"),
                   Delivery("render", "r2")]
    assert box.dropped == {"preview": 0, "render": 1}
    assert box.take(timeout=0.01) is None


def test_mailbox_take_nowait_filters_channels_and_close_is_a_sentinel():
    box = Mailbox(["preview", "render"])
    box.put("render", "r")
    assert box.take_nowait("preview") is None
    box.put("preview", "p")
    assert box.take_nowait("preview") == Delivery("preview", "p")
    assert box.pending("render")
    assert box.clear("render") == "r"
    with pytest.raises(KeyError):
        box.put("nope", 1)
    box.close()
    assert box.take() is CLOSED
    with pytest.raises(RuntimeError):
        box.send("late")
