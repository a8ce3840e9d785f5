"""`gfl simulate`: N virtual clients through the same rounds, trainer, strategies and codec
as the live network, without a network or a chain; clients train in this process, in worker
processes or on a Ray cluster (`backends`), with the same models on each."""
