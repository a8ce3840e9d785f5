"""The federated-learning layer: job spec, codec, models, data, trainer, strategies, rounds.

Pure and network-free: nothing here imports libp2p, web3 or trio. The node wires
these pieces to the network and the chain.
"""
