"""Strength schedules (epsilon warm-up and ramps, and any other attack or loss parameter)."""

from advtrain.schedules.base import Constant, Linear, Progress, Schedule
from advtrain.schedules.build import build_schedule
from advtrain.schedules.shapes import Cosine, Piecewise, Smoothed, Step

__all__ = [
    "Constant",
    "Cosine",
    "Linear",
    "Piecewise",
    "Progress",
    "Schedule",
    "Smoothed",
    "Step",
    "build_schedule",
]
