"""Sweeping existing storage: decide every image already stored (local disk, SSH, S3, pict-rs) with the node's
own pipeline, and act on positives.

  engine    one sweep of one source: listing, the known-items skip, workers, checkpoints
  records   what sweeps remember: runs, cursors, one row per item, the admin's overrides
  actions   quarantine / delete / dry run, apply, release: each recorded before it touches storage
  recovery  settling every action a kill cut short
  report    the positives, for review and reports to the authorities
  times     durations and times on the command line
  commands  `verdict-node scan`, `apply`, `release`, `report`
"""
