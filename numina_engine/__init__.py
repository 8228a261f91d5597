"""numina-engine: count-aligned text-to-video (NUMINA) on Wan2.1.

    import numina_engine
    engine = numina_engine.Engine.load()          # embedded demo model; or Engine.load("/path/to/Wan2.1-T2V-1.3B")
    result = engine.generate(numina_engine.GenerationRequest(prompt="Three cats chasing two dogs"))
    engine.save(result, "out/")
"""
from .errors import CheckpointError, UserInputError

__all__ = ["Engine", "GenerationRequest", "CheckpointError", "UserInputError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # torch and the model code load on first use, so that `numina-engine --help` answers at once.
    if name == "Engine":
        from .api import Engine
        return Engine
    if name == "GenerationRequest":
        from .engine.settings import GenerationRequest
        return GenerationRequest
    raise AttributeError(f"module 'numina_engine' has no attribute {name!r}")
