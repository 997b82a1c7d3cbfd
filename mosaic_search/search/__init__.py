"""Torch-free search: the problem (typed choices, budgets), the MIP and the baselines it is compared with."""
