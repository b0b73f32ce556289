"""Frame sources (webcam, video file, still photo) behind one interface, on plain Python threads."""

from engine.capture.base import CaptureEvent, CaptureFrame, EventKind, FrameSource

__all__ = ["CaptureEvent", "CaptureFrame", "EventKind", "FrameSource"]
