"""FedShare ServerApp: rounds, the shared-edge store and the server graph model."""
