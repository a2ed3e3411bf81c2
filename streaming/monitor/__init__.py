"""The operators' view: dashboard, JSON API, live events, /metrics and sentiment-shift alerts (``worker --role monitor``)."""
