"""Benchmark: face detection + 68 landmarks per 640×480 frame on one CPU core (not a test).

Compares the live-overlay tracker (HOG on a 320-wide copy every Nth frame, landmarks at full
resolution every frame) with full-resolution detection as the official script does it (1 upsampling
pass), and prints frames per second and the ratio. Usage: python bench/faces.py [--frames 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def _frames(n: int):
    import numpy as np
    from PIL import Image
    from skimage import data

    face = np.asarray(Image.fromarray(data.astronaut()).resize((400, 400), Image.Resampling.LANCZOS))
    out = []
    for i in range(n):
        frame = np.full((480, 640, 3), 200, np.uint8)
        dx = int(60 + 40 * np.sin(i / 8))  # the head drifts sideways like a webcam user
        frame[40:440, dx : dx + 400] = face
        out.append(frame)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    import cv2

    cv2.setNumThreads(1)
    from engine.faces.detect import FaceDetector
    from engine.faces.quality import assess
    from engine.faces.track import FaceTracker

    frames = _frames(args.frames)
    det = FaceDetector()
    det.detect(frames[0])  # warm up

    def run(label: str, fn) -> float:
        t0 = time.perf_counter()
        hits = sum(fn(f) is not None for f in frames)
        dt = (time.perf_counter() - t0) / len(frames)
        print(f"{label:<58} {dt * 1000:7.1f} ms/frame  {1 / dt:6.1f} fps  (face in {hits}/{len(frames)})")
        return dt

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (1 used), "
          f"python {platform.python_version()}, opencv {cv2.__version__}")
    full = run("full-res HOG (1 upsample, official) + landmarks", lambda f: (det.detect(f) or [None])[0])
    full0 = run("full-res HOG (no upsample), boxes only",
                lambda f: next(iter(det.detect_boxes(f, upsample=0)), None))
    every1 = FaceTracker(det, detect_every=1)
    t1 = run("tracker: 320-wide HOG every frame + full-res landmarks", every1.update)
    tracker = FaceTracker(det, detect_every=4)
    t4 = run("tracker: 320-wide HOG every 4th frame + full-res landmarks", tracker.update)
    track_q = FaceTracker(det, detect_every=4)
    tq = run("tracker (every 4th) + quality gates", lambda f: (lambda b: b and assess(f, b))(track_q.update(f)))
    print(f"ratio full-res official / tracker every 4th: {full / t4:.1f}×; "
          f"no-upsample full-res / tracker every frame: {full0 / t1:.1f}×; quality adds {(tq - t4) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
