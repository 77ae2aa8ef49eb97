"""One JSON file per variant relzoo publishes on the Hub (architecture, config, preprocessing, card metadata).

Shipped inside the package as ``relzoo.hub_configs`` (see pyproject.toml); read through :mod:`relzoo.variants`."""
