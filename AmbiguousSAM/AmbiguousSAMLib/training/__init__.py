"""Training and evaluation of the ambiguity heads on multi-rater crops (LIDC-IDRI format)."""
