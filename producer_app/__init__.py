"""producer_app: Binance WebSocket feed -> normalized PriceEvents -> Kafka.

Data comes from Binance's combined WebSocket stream (or the local replay server in
``producer_app.replay_server``) and from Binance's REST API for gap fills; it goes to the
Kafka topics named in docs/architecture.md (prices, dead letters, gaps).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
