"""W+ Studio desktop app (PySide6). Talks to the engine only through `desktop.engine_client`."""
