"""`tfb serve`: an OpenAI-compatible HTTP server (chat completions, completions, models, health) with
continuous batching. Needs the `serve` extra (`pip install tfb[serve]`): FastAPI on uvicorn.

    engine.py    the model thread: jobs, their caches, batched decoding steps
    protocol.py  request bodies (pydantic) and OpenAI-style errors
    app.py       the ASGI application: routes, streaming, limits, API key
"""
