"""A plug-in that cannot be imported."""

raise ImportError("no module named 'gpio_hw'")
