"""Ranking: the flag rule (robust z-scores, flags) and the masking refits."""
