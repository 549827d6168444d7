"""data_adapters."""
