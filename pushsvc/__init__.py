"""pushsvc: push-notification delivery microservice."""

__version__ = "0.1.0"
