"""The fusion-edge runtime: bundle reader, preprocessing, prompt building, tokenizer,
pipeline and backends. Never imports torch."""
