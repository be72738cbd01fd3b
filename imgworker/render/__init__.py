"""Pure image code: pyvips in, files out. Knows nothing of queues, Redis or arq."""

from imgworker.render.errors import RenderError
from imgworker.render.options import Output, RenderOptions, RenderRequest, RenderResult, Variant, options_of
from imgworker.render.pipeline import current, render

__all__ = [
    "Output",
    "RenderError",
    "RenderOptions",
    "RenderRequest",
    "RenderResult",
    "Variant",
    "current",
    "options_of",
    "render",
]
