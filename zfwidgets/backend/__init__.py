"""The analysis backend: torch only. Nothing here imports ipywidgets or matplotlib."""

from .layers import Geometry, LayerInfo
from .project import Target, project, projection_to_rgb
from .rules import RULES, RuleMode
from .session import Session

__all__ = ["Geometry", "LayerInfo", "RULES", "RuleMode", "Session", "Target", "project",
           "projection_to_rgb"]
