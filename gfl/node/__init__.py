"""The Manager layer: one node process assembled and run (config, datadir, keys, store,
events, logs, the control API), and the local devnet that starts several of them."""
