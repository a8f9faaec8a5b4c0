"""The cleaning loop: export the ranking for review, apply decisions, compare runs."""
