"""Finding, recognising, loading and caching model weights; device and dtype policy live here only."""
