"""The Ray layer: launch (entry point), driver (single-controller loop), remote (the only ray.remote
wrappers). Arrives with issue 5."""
