"""Flower-free core of FedShare: data, sharing policy, graph, models, losses, metrics.

Nothing in this package imports ``flwr`` except :mod:`common.protocol`.
"""
