"""Evaluation: accuracy of every weight path against float64, and perplexity."""
