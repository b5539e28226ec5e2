"""Synthetic front-end events for ipympl canvases (what the browser would send)."""

from __future__ import annotations


def click(fig, ax, x, y, button=0, modifiers=()):
    """A mouse press as the ipympl front-end sends it, at data coordinates ``(x, y)`` of ``ax``
    (converted to pixel coordinates from the top of the canvas), with ``modifiers`` held
    (``["shift"]``, say)."""
    fig.canvas.draw()
    px, py = ax.transData.transform((x, y))
    height = fig.canvas.get_renderer().height
    fig.canvas._handle_message(fig.canvas, {"type": "button_press", "x": float(px),
                                            "y": float(height - py), "button": button,
                                            "buttons": 1, "modifiers": list(modifiers)}, [])
