"""Profiler: captures a model as a graph and measures every node's time and memory."""
