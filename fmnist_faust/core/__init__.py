"""Transport-agnostic core shared by the Faust worker and the Pub/Sub bridge."""
