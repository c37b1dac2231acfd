"""The machinery every sweep file shares. A sweep file needs only :class:`Sweep` and :func:`launch`."""

from sweeps.launch.main import launch
from sweeps.launch.spec import PRESETS, Preset, Sweep, SweepError

__all__ = ["PRESETS", "Preset", "Sweep", "SweepError", "launch"]
