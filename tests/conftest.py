"""Shared fixtures: real music rendered with the General MIDI SoundFont.

Rendering is deterministic and fast (~0.1 s per 10 s clip), so every test
that needs "real music audio" uses these rather than sines or noise.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from musicdiff_lib.synth import demo_clip  # noqa: E402


@pytest.fixture(scope="session")
def music_10k() -> np.ndarray:
    """10 s of multi-instrument music at the report's 10 kHz."""
    return demo_clip(10.0, 10000, seed=1)


@pytest.fixture(scope="session")
def music_16k() -> np.ndarray:
    """10 s of multi-instrument music at 16 kHz (organ lead, no drums: a different texture)."""
    return demo_clip(10.0, 16000, seed=2, lead_program=19, tempo=84, drums=False)


@pytest.fixture(scope="session")
def music_batch_16k() -> np.ndarray:
    """Three different 4 s clips at 16 kHz, shape (3, samples)."""
    return np.stack([demo_clip(4.0, 16000, seed=s, lead_program=p) for s, p in [(3, 0), (4, 24), (5, 73)]])


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for modules of tiny tensors: thread-pool overhead dominates them (badly on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
