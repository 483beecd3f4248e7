"""FedShare ClientApp: one SuperNode hosting a partition of users."""
