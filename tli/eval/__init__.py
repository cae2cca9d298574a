"""Alignment metrics, statistics, the layer scan, before/after evaluation and its reports."""
