"""GFL: decentralized federated learning over libp2p, with jobs and rounds fixed on Ethereum."""

__version__ = "0.1.0"
