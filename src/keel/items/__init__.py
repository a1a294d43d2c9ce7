"""Items: the owned resource every later resource copies (see docs/items.md)."""
