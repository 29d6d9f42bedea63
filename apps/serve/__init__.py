"""`fusion-edge serve`: an OpenAI-compatible chat-completions API for any bundle (docs/serve.md).

handler.py is the one implementation of a request (parse, validate, prompt, generate, shape the
response); scheduler.py the worker thread that owns the Pipeline; app.py the FastAPI layer;
ray_app.py the same app as a Ray Serve deployment; cli.py the command.
"""
