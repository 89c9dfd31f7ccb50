"""What happens to the network during a run: faults (crashes, churn, link loss, partitions) and the
simulated clock (compute speeds, bandwidth, latency), each with its config spec."""
