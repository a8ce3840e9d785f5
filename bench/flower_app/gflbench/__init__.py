"""Flower app of bench/vs_flower.py."""
