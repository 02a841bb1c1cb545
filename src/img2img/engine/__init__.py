"""Pure computation: a request and loaded components in, images out. No files, no HTTP, no globals."""
