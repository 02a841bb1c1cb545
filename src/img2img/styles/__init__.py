"""The built-in style engine: pretrained style-transfer networks that need no download."""
