"""Face capture: detection, landmarks, FFHQ alignment, background whitening, quality, likeness.

Submodules import their heavy dependencies (dlib, cv2, torch) inside functions so that lightweight
callers (CLI --help, the GUI) can import the package cheaply.
"""
