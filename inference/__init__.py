"""Cadence inference server: OpenAI-compatible API, continuous batching, zero-drop model swap.

`create_app(cfg)` (inference/app.py) builds the FastAPI app; `python -m inference --help` runs it.
`inference.logits` (the logit penalties) imports without the server's web stack.
"""


def __getattr__(name):
    if name == "create_app":
        from inference.app import create_app
        return create_app
    raise AttributeError(name)


__all__ = ["create_app"]
