"""charlstm: character-level LSTM language models in NumPy.

    import charlstm
    model = charlstm.load("runs/my/best.safetensors")   # see charlstm.api
"""

__version__ = "0.1.0"


def load(path):
    """The model in a charlstm checkpoint file, with `.sample()`, `.score()` and
    `.logits()` (a charlstm.api.CharModel)."""
    from .api import load as load_checkpoint  # imported on use: `import charlstm` stays instant

    return load_checkpoint(path)
