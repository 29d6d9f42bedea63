"""The fusion-edge runtime: bundle reader, preprocessing, prompt building, tokenizer,
pipeline and backends. Never imports torch.

`from fusion_edge.runtime import Pipeline` works; it is imported on first use so that
light modules (errors, config) stay light.
"""


def __getattr__(name):
    if name in ("Pipeline", "Scene"):
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(name)
