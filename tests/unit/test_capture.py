"""Frame sources: the webcam thread against a scripted cv2-like capture (the hardware boundary), video, stills."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from engine.capture.base import EventKind
from engine.capture.files import StillImageSource, VideoFileSource
from engine.capture.webcam import WebcamSource, list_cameras


class ScriptedCamera:
    """A cv2.VideoCapture stand-in driven by the test: `plugged` and `frames` are switched from outside."""

    def __init__(self, world: World, index: int) -> None:
        self.world = world
        self.index = index
        self.open = world.plugged.is_set()
        self.released = False
        self.props: dict[int, float] = {}

    def isOpened(self) -> bool:
        return self.open

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def read(self):
        time.sleep(0.002)
        if not self.world.plugged.is_set() or self.released:
            return False, None
        n = self.world.count
        self.world.count += 1
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., 0] = n % 256  # BGR: blue channel carries the frame number
        frame[..., 2] = 200
        return True, frame

    def release(self) -> None:
        self.released = True
        self.world.releases += 1


class World:
    def __init__(self, plugged: bool = True) -> None:
        self.plugged = threading.Event()
        if plugged:
            self.plugged.set()
        self.count = 0
        self.releases = 0
        self.opened: list[ScriptedCamera] = []

    def factory(self, index: int) -> ScriptedCamera:
        cam = ScriptedCamera(self, index)
        self.opened.append(cam)
        return cam


def _wait_for(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return False


def _kinds(events):
    return [e.kind for e in events]


def test_webcam_delivers_rgb_frames_newest_only():
    world = World()
    events = []
    cam = WebcamSource(0, 1280, 720, capture_factory=world.factory, on_event=events.append)
    cam.start()
    try:
        f1 = cam.latest(timeout=2)
        assert f1 is not None
        assert f1.image.shape == (48, 64, 3)
        assert f1.image[0, 0, 0] == 200  # BGR → RGB: red is the former channel 2
        # once the camera has read 4 more frames, at least 2 more were published
        assert _wait_for(lambda: world.count >= f1.index + 5)
        f2 = cam.latest(timeout=2, newer_than=f1.index)
        assert f2 is not None
        assert f2.index > f1.index + 1  # frames in between were overwritten, not queued
    finally:
        cam.stop()
    import cv2

    assert world.opened[0].props[cv2.CAP_PROP_FRAME_WIDTH] == 1280
    assert _kinds(events)[0] == EventKind.OPENED
    assert _kinds(events)[-1] == EventKind.STOPPED
    assert world.releases >= 1
    assert not cam.running


def test_camera_unplugged_mid_stream_is_an_event_and_recovers():
    world = World()
    events = []
    cam = WebcamSource(0, capture_factory=world.factory, on_event=events.append, retry_interval=0.02)
    cam.start()
    try:
        assert cam.latest(timeout=2) is not None
        world.plugged.clear()  # unplug
        assert _wait_for(lambda: EventKind.LOST in _kinds(events))
        lost = next(e for e in events if e.kind == EventKind.LOST)
        assert "unplugged" in lost.message
        assert cam.running  # no crash: the thread keeps trying
        seen = cam.latest(timeout=0).index
        world.plugged.set()  # plug back in
        assert _wait_for(lambda: EventKind.RECOVERED in _kinds(events))
        fresh = cam.latest(timeout=2, newer_than=seen)
        assert fresh is not None
        assert fresh.index > seen
    finally:
        cam.stop()
    assert _kinds(events).count(EventKind.LOST) == 1


def test_absent_camera_is_reported_once_and_picked_up_when_plugged_in():
    world = World(plugged=False)
    events = []
    cam = WebcamSource(2, capture_factory=world.factory, on_event=events.append, retry_interval=0.02)
    cam.start()
    try:
        assert _wait_for(lambda: EventKind.UNAVAILABLE in _kinds(events))
        time.sleep(0.1)
        assert _kinds(events).count(EventKind.UNAVAILABLE) == 1  # not repeated on every retry
        assert "could not be opened" in events[0].message
        assert cam.latest(timeout=0.05) is None
        world.plugged.set()
        assert cam.latest(timeout=2) is not None
        assert EventKind.RECOVERED in _kinds(events)
    finally:
        cam.stop()


def test_factory_that_raises_is_survived():
    calls = []

    def broken(index):
        calls.append(index)
        raise RuntimeError("driver exploded")

    cam = WebcamSource(0, capture_factory=broken, retry_interval=0.01)
    cam.start()
    try:
        assert _wait_for(lambda: len(calls) >= 3)
        assert cam.running
        assert _kinds(cam.drain_events()) == [EventKind.UNAVAILABLE]
    finally:
        cam.stop()


def test_a_hanging_driver_cannot_hang_stop():
    release = threading.Event()

    class Hanging:
        def isOpened(self):
            return True

        def set(self, *_):
            return True

        def read(self):
            release.wait(5)
            return False, None

        def release(self):
            pass

    cam = WebcamSource(0, capture_factory=lambda i: Hanging(), stall_after=0.05)
    cam.start()
    time.sleep(0.1)
    assert cam.latest(timeout=0.01) is None
    assert EventKind.STALLED in _kinds(cam.drain_events())
    t0 = time.monotonic()
    cam.stop(timeout=0.2)
    assert time.monotonic() - t0 < 1.0
    release.set()


def test_list_cameras_probes_working_devices():
    world = World()

    def factory(i):
        if i == 1:
            raise RuntimeError("busy")
        cam = world.factory(i)
        cam.open = i in (0, 2)
        return cam

    found = list_cameras(4, capture_factory=factory)
    assert [c.index for c in found] == [0, 2]
    assert (found[0].width, found[0].height) == (64, 48)
    assert all(c.released for c in world.opened)


def test_video_file_source_plays_and_ends(tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG AVI")
    for i in range(6):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., 2] = 40 * i  # red ramps up (BGR)
        writer.write(frame)
    writer.release()
    src = VideoFileSource(path, realtime=False)
    src.start()
    assert _wait_for(lambda: EventKind.ENDED in _kinds(src.drain_events()))
    last = src.latest(timeout=0)
    assert last is not None
    assert last.index == 5
    assert abs(int(last.image[..., 0].mean()) - 200) <= 8  # RGB red of the last frame
    src.stop()


def test_video_file_errors_are_clear(tmp_path):
    from engine.errors import ImageUnreadable

    with pytest.raises(ImageUnreadable, match="does not exist"):
        VideoFileSource(tmp_path / "missing.mp4").start()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ImageUnreadable, match="cannot be decoded"):
        VideoFileSource(bad).start()


def test_still_image_source_honours_exif():
    blocks = np.zeros((32, 48, 3), np.uint8)
    blocks[:16, :24] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to view
    buf = io.BytesIO()
    Image.fromarray(blocks).save(buf, format="JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    src = StillImageSource(buf.getvalue())
    src.start()
    frame = src.latest()
    assert frame is not None
    assert frame.image.shape == (48, 32, 3)
    assert np.abs(frame.image.astype(int) - np.rot90(blocks, k=1)).mean() < 4
    assert src.latest(newer_than=0) is None
