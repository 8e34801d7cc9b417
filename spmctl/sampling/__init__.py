"""Sampling with membranes: facilitated transport, batched generation, resumable output."""
