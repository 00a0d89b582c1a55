"""charlstm: character-level LSTM language models in NumPy."""

__version__ = "0.1.0"
