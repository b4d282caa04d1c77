"""Closed-loop evaluation: batched rollouts, metrics with 95 % CIs, latency, videos."""
