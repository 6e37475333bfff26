"""Model inputs from data: featurisation, the frozen tokenizers and their caches."""
