"""edgegen's runtime: run an exported artifact with onnxruntime; never imports torch."""
from .artifact import Artifact, load_artifact
from .errors import EdgegenError
from .pipeline import Pipeline

__all__ = ["Artifact", "EdgegenError", "Pipeline", "load_artifact"]
