"""A rule-based model: no training, only a scoring job with a documented rule."""
