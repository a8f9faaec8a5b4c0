"""Influence arithmetic: per-example gradients, the Hessian, its conditioning, inverse-
Hessian-vector products (``solvers/``) and the pair and self-influence scores."""
