"""Protocol handlers, one module per protocol; ``base`` defines the interface they implement."""
