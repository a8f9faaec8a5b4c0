"""Evaluation: inject known faults, scan, and measure how well each ranking finds them."""
