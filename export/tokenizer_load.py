"""Load a checkpoint's tokenizer: tokenizer.json, or a conversion of tokenizer.model."""
from __future__ import annotations

import json
from pathlib import Path

from fusion_edge.runtime.errors import CheckpointError
from fusion_edge.runtime.tokenizer import Tokenizer


def load_checkpoint_tokenizer(folder: str | Path) -> Tokenizer:
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_dir(folder)
    if (folder / "tokenizer.model").is_file():
        from .spm_convert import tokenizer_from_spm
        cfg_path = folder / "tokenizer_config.json"
        config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        return Tokenizer.from_tokenizer(tokenizer_from_spm(folder), config)
    raise CheckpointError(f"no tokenizer in {folder} (neither tokenizer.json nor tokenizer.model).",
                          "copy the checkpoint's tokenizer files next to config.json")
