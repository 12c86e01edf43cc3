"""Subcommands of `revproxy` beyond run/check/demo, one module per feature."""
