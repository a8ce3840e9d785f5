"""`gfl simulate`: N virtual clients through the same rounds, trainer, strategies and codec
as the live network, without a network or a chain."""
