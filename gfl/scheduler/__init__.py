"""The Scheduler layer: which jobs this node runs and in what order, and each job's rounds.

It drives the network and the chain through two narrow ports (`Ledger`, `Exchange`)
and leaves the FL layer pure."""
