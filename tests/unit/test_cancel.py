from __future__ import annotations

import threading

import pytest

from engine.cancel import CancelToken
from engine.errors import Cancelled


def test_cancel_from_another_thread_is_seen_at_the_next_check():
    token = CancelToken()
    token.raise_if_cancelled()
    t = threading.Thread(target=token.cancel)
    t.start()
    t.join()
    assert token.cancelled
    with pytest.raises(Cancelled):
        token.raise_if_cancelled()
