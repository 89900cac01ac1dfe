"""Model registry (catalogue, resolution, download), safe loading, the shared model cache and tiny models."""
