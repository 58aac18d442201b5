"""Ambiguity heads: ways to draw K plausible masks from one image embedding and one box."""
